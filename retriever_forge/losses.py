"""Retrieval losses over embedding tensors.

* :func:`info_nce` - contrastive loss with hard negatives and in-batch negatives.
* :func:`graded_listwise_kl` - list-wise loss over graded labels (Esfandiarpoor et al. 2025,
  "Beyond Contrastive Learning: Synthetic Data Enables List-wise Training with Multiple Levels
  of Relevance"): the model's softmax over a query's list is pulled towards the softmax of the
  list's grades, by KL divergence or, optionally, the Wasserstein-1 distance along the grade
  axis (moving mass from a grade-3 to a grade-0 passage costs more than to a grade-2 one).

Pass L2-normalised embeddings: similarities are plain dot products, so they are cosines.

Example:
    >>> import torch
    >>> q = torch.tensor([[1.0, 0.0]]); pos = torch.tensor([[1.0, 0.0]])
    >>> negs = torch.tensor([[[0.0, 1.0]]])
    >>> round(info_nce(q, pos, negs, temperature=1.0).item(), 4)  # -log(e / (e + 1))
    0.3133
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

_NEG_INF = -1e4  # added to masked logits; finite, so bf16/fp16 softmax never sees inf - inf


def info_nce(
    q: torch.Tensor,
    pos: torch.Tensor,
    negs: torch.Tensor | None = None,
    temperature: float = 0.05,
    in_batch: bool = True,
    neg_mask: torch.Tensor | None = None,
    pos_ids: torch.Tensor | None = None,
    neg_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean InfoNCE loss of each query's positive against its negatives.

    Query ``i`` scores its positive ``pos[i]`` against its own hard negatives ``negs[i]`` and,
    when ``in_batch``, every other positive and hard negative in the batch.

    Args:
        q: ``(B, d)`` queries; pos: ``(B, d)`` positives; negs: ``(B, N, d)`` hard negatives.
        neg_mask: ``(B, N)`` bool, False for padding slots (queries with fewer negatives).
        pos_ids, neg_ids: optional ``(B,)`` / ``(B, N)`` integer passage ids. A candidate that
            is query ``i``'s own positive passage (a duplicate in the batch) is masked out for
            ``i``, so it is never pushed away as a false negative.

    >>> q = torch.eye(2); round(info_nce(q, q, temperature=1.0).item(), 4)  # -log(e/(e+1))
    0.3133
    """
    b = q.shape[0]
    pos_logits = (q * pos).sum(-1, keepdim=True)  # (B, 1)
    columns = [pos_logits]
    masks = [torch.ones_like(pos_logits, dtype=torch.bool)]
    ids = [pos_ids.view(b, 1)] if pos_ids is not None else None

    if negs is not None and negs.shape[1] > 0:
        n = negs.shape[1]
        nm = neg_mask if neg_mask is not None else torch.ones(b, n, dtype=torch.bool, device=q.device)
        if in_batch:
            flat = negs.reshape(b * n, -1)
            columns.append(q @ flat.T)  # (B, B*N): every query against every hard negative
            masks.append(nm.reshape(1, b * n).expand(b, b * n))
            if ids is not None:
                ids.append(neg_ids.reshape(1, b * n).expand(b, b * n))
        else:
            columns.append(torch.einsum("bd,bnd->bn", q, negs))
            masks.append(nm)
            if ids is not None:
                ids.append(neg_ids)
    if in_batch and b > 1:
        off_diag = ~torch.eye(b, dtype=torch.bool, device=q.device)
        columns.append(q @ pos.T)  # (B, B); the diagonal duplicates column 0 and is masked
        masks.append(off_diag)
        if ids is not None:
            ids.append(pos_ids.view(1, b).expand(b, b))

    logits = torch.cat(columns, dim=1) / temperature
    mask = torch.cat(masks, dim=1)
    if ids is not None:
        all_ids = torch.cat(ids, dim=1)
        same_as_positive = all_ids == pos_ids.view(b, 1)
        same_as_positive[:, 0] = False  # the positive itself
        mask = mask & ~same_as_positive
    logits = logits.masked_fill(~mask, _NEG_INF)
    target = torch.zeros(b, dtype=torch.long, device=q.device)
    return F.cross_entropy(logits.float(), target)


def graded_listwise_kl(
    q: torch.Tensor,
    docs: torch.Tensor,
    grades: torch.Tensor,
    temperature: float = 0.05,
    grade_temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    distance: Literal["kl", "wasserstein"] = "kl",
) -> torch.Tensor:
    """Mean list-wise loss between the model's and the grades' distributions over each list.

    target = softmax(grades / grade_temperature), model = softmax(q . doc / temperature), both
    over the list's valid slots; ``distance="kl"`` gives KL(target || model), ``"wasserstein"``
    the Wasserstein-1 distance with ground metric |grade_i - grade_j| (zero for equal grades).

    Args:
        q: ``(B, d)`` queries; docs: ``(B, L, d)`` each query's list (positive and negatives).
        grades: ``(B, L)`` graded labels, e.g. 0..3 expected judge grades.
        mask: ``(B, L)`` bool, False for padding slots.

    >>> q = torch.tensor([[1.0, 0.0]]); docs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    >>> g = torch.tensor([[1.0, 0.0]])  # target softmax([1, 0]) == softmax of the scores
    >>> round(graded_listwise_kl(q, docs, g, temperature=1.0).item(), 6)
    0.0
    """
    if distance not in ("kl", "wasserstein"):
        raise ValueError(f"unknown distance {distance!r}")
    valid = mask if mask is not None else torch.ones(grades.shape, dtype=torch.bool, device=grades.device)
    sims = torch.einsum("bd,bld->bl", q, docs).float() / temperature
    grades = grades.float()
    target = torch.softmax((grades / grade_temperature).masked_fill(~valid, _NEG_INF), dim=-1)
    log_model = torch.log_softmax(sims.masked_fill(~valid, _NEG_INF), dim=-1)
    if distance == "kl":
        # xlogy makes 0 * log 0 == 0 for padding slots.
        per_query = (torch.xlogy(target, target) - target * log_model).masked_fill(~valid, 0.0).sum(-1)
    else:
        per_query = _wasserstein1_on_grades(target, log_model.exp(), grades.masked_fill(~valid, 0.0))
    return per_query.mean()


def _wasserstein1_on_grades(target: torch.Tensor, model: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
    """W1 between two distributions over list slots placed at their grades on a line.

    On a line, W1 = integral |F_target - F_model|: sort slots by grade, accumulate the mass
    difference, and weigh it by the gap to the next grade. Padding slots carry no mass in
    either distribution, so wherever they sort they change no cumulative sum.
    """
    order = torch.argsort(grades, dim=-1, stable=True)
    g = torch.gather(grades, -1, order)
    diff = torch.gather(model, -1, order) - torch.gather(target, -1, order)
    cdf_gap = torch.cumsum(diff, dim=-1)[:, :-1]
    return (cdf_gap.abs() * (g[:, 1:] - g[:, :-1])).sum(-1)
