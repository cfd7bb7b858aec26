"""Losses on tiny tensors with hand-computed answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from retriever_forge.losses import graded_listwise_kl, info_nce

E = math.e


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def t(x):
    return torch.tensor(x, dtype=torch.float32)


# ---------------------------------------------------------------------------------- info_nce


def test_info_nce_single_query_known_value():
    # logits (T=1): positive 1, negative 0 -> -log(e / (e + 1)).
    loss = info_nce(t([[1.0, 0.0]]), t([[1.0, 0.0]]), t([[[0.0, 1.0]]]), temperature=1.0)
    assert loss.item() == pytest.approx(-math.log(E / (E + 1)), abs=1e-6)


def test_info_nce_in_batch_adds_other_positives_and_negatives():
    q = t([[1.0, 0.0], [0.0, 1.0]])
    pos = t([[1.0, 0.0], [0.0, 1.0]])
    negs = t([[[0.0, 1.0]], [[1.0, 0.0]]])
    # Without in-batch: each query sees its positive (1) and its negative (0).
    alone = info_nce(q, pos, negs, temperature=1.0, in_batch=False)
    assert alone.item() == pytest.approx(-math.log(E / (E + 1)), abs=1e-6)
    # In-batch, query 0 sees: pos 1 | negs of both queries (0, 1) | other positive (0).
    both = info_nce(q, pos, negs, temperature=1.0, in_batch=True)
    assert both.item() == pytest.approx(-math.log(E / (E + 1 + E + 1)), abs=1e-6)


def test_info_nce_temperature_scales_logits():
    q, pos, negs = t([[1.0, 0.0]]), t([[0.6, 0.8]]), t([[[0.0, 1.0]]])
    # logits 0.6/0.1 = 6 and 0.0 -> -log(e^6 / (e^6 + 1))
    assert info_nce(q, pos, negs, temperature=0.1).item() == pytest.approx(math.log1p(math.exp(-6)), rel=1e-4)


def test_info_nce_mask_ignores_padding_negatives():
    q, pos = t([[1.0, 0.0]]), t([[1.0, 0.0]])
    negs = t([[[0.0, 1.0], [1.0, 0.0]]])  # second slot is padding: it would score like the positive
    masked = info_nce(q, pos, negs, temperature=1.0, neg_mask=torch.tensor([[True, False]]))
    assert masked.item() == pytest.approx(-math.log(E / (E + 1)), abs=1e-6)


def test_info_nce_masks_false_negatives_by_passage_id():
    # Query 1's hard negative is query 0's positive passage (same id 7): not a negative for q0.
    q = t([[1.0, 0.0], [0.0, 1.0]])
    pos = t([[1.0, 0.0], [0.0, 1.0]])
    negs = t([[[0.0, 1.0]], [[1.0, 0.0]]])
    pos_ids = torch.tensor([7, 8])
    neg_ids = torch.tensor([[9], [7]])
    loss_ids = info_nce(q, pos, negs, temperature=1.0, pos_ids=pos_ids, neg_ids=neg_ids)
    # q0: pos 1 | negs: own (0), q1's = passage 7 masked | other positive (0) -> e / (e + 2)
    # q1: pos 1 | negs: q0's (1), own (0)             | other positive (0) -> e / (2e + 2)
    expected = -(math.log(E / (E + 2)) + math.log(E / (2 * E + 2))) / 2
    assert loss_ids.item() == pytest.approx(expected, abs=1e-6)


def test_info_nce_perfect_separation_near_zero_and_gradient_pulls_positive():
    q = t([[1.0, 0.0]])
    assert info_nce(q, q, t([[[-1.0, 0.0]]]), temperature=0.01).item() < 1e-6
    pos = t([[0.0, 1.0]]).requires_grad_()
    neg = t([[[1.0, 0.0]]]).requires_grad_()
    info_nce(q, pos, neg, temperature=1.0).backward()
    # Descending the loss moves the positive towards q (+x) and the negative away (-x).
    assert pos.grad[0, 0] < 0 and neg.grad[0, 0, 0] > 0


# ------------------------------------------------------------------------- graded list-wise


def test_graded_kl_is_zero_when_scores_match_grades():
    q = t([[1.0, 0.0]])
    docs = t([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])  # sims 1, 0, -1
    loss = graded_listwise_kl(q, docs, t([[1.0, 0.0, -1.0]]), temperature=1.0, grade_temperature=1.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_graded_kl_known_value_and_minimum():
    q = t([[1.0, 0.0]])
    docs = t([[[1.0, 0.0], [1.0, 0.0]]])  # equal sims: model = [0.5, 0.5]
    grades = t([[3.0, 0.0]])
    target = torch.softmax(grades, -1)
    expected = float((target * (target.log() - math.log(0.5))).sum())
    loss = graded_listwise_kl(q, docs, grades, temperature=1.0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    aligned = graded_listwise_kl(q, t([[[1.0, 0.0], [-1.0, 0.0]]]), grades, temperature=2 / 3)  # sims/T = 1.5, -1.5
    assert aligned.item() == pytest.approx(0.0, abs=1e-6)  # softmax([3, 0]) == softmax([1.5, -1.5])


def test_graded_uniform_grades_give_uniform_target():
    q = t([[1.0, 0.0]])
    docs = t([[[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]]])
    grades = t([[2.0, 2.0, 2.0]])
    sims = torch.tensor([0.6, 0.0, 1.0]) / 0.5
    # KL(uniform || p) = sum 1/3 * (log(1/3) - log p)
    expected = float((torch.full((3,), 1 / 3) * (math.log(1 / 3) - torch.log_softmax(sims, -1))).sum())
    assert graded_listwise_kl(q, docs, grades, temperature=0.5).item() == pytest.approx(expected, abs=1e-6)


def test_graded_grade_temperature_sharpens_target():
    q = t([[1.0, 0.0]])
    docs = t([[[1.0, 0.0], [0.0, 1.0]]])  # model softmax([1, 0])
    soft = graded_listwise_kl(q, docs, t([[1.0, 0.0]]), temperature=1.0, grade_temperature=1.0)
    sharp = graded_listwise_kl(q, docs, t([[1.0, 0.0]]), temperature=1.0, grade_temperature=0.1)
    assert soft.item() == pytest.approx(0.0, abs=1e-6) and sharp.item() > 0.2


def test_graded_mask_excludes_padding():
    q = t([[1.0, 0.0]])
    docs = t([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    padded = graded_listwise_kl(q, docs, t([[1.0, 0.0, 5.0]]), temperature=1.0, mask=torch.tensor([[True, True, False]]))
    assert padded.item() == pytest.approx(0.0, abs=1e-6)


def test_graded_gradient_sign_raises_higher_grade():
    q = t([[1.0, 0.0]])
    good = t([[0.0, 1.0]]).requires_grad_()
    bad = t([[0.0, 1.0]]).requires_grad_()
    graded_listwise_kl(q, torch.stack([good, bad], dim=1), t([[3.0, 0.0]]), temperature=1.0).backward()
    assert good.grad[0, 0] < 0 < bad.grad[0, 0]  # descent: the grade-3 doc moves towards q


def test_wasserstein_known_values():
    q = t([[1.0, 0.0]])
    grades = t([[3.0, 0.0]])
    # Model puts everything on the grade-0 doc (T small), target almost all on grade 3 (gt small):
    # W1 = |grade gap| * mass moved = 3 * 1.
    docs = t([[[-1.0, 0.0], [1.0, 0.0]]])
    w = graded_listwise_kl(q, docs, grades, temperature=0.01, grade_temperature=0.01, distance="wasserstein")
    assert w.item() == pytest.approx(3.0, abs=1e-4)
    # Matching distributions: zero.
    matched = graded_listwise_kl(q, t([[[1.0, 0.0], [-1.0, 0.0]]]), grades, temperature=2 / 3, distance="wasserstein")
    assert matched.item() == pytest.approx(0.0, abs=1e-6)


def test_wasserstein_ground_metric_is_grade_distance():
    # Three docs with grades 3, 2, 0; target ~ all on grade 3. Model all on the grade-2 doc costs 1,
    # all on the grade-0 doc costs 3 (KL would call both equally wrong).
    q = t([[1.0, 0.0]])
    grades = t([[3.0, 2.0, 0.0]])
    on_grade2 = t([[[-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]])
    on_grade0 = t([[[-1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]]])
    kw = dict(temperature=0.01, grade_temperature=0.01, distance="wasserstein")
    assert graded_listwise_kl(q, on_grade2, grades, **kw).item() == pytest.approx(1.0, abs=1e-4)
    assert graded_listwise_kl(q, on_grade0, grades, **kw).item() == pytest.approx(3.0, abs=1e-4)
    # Equal grades are free to trade mass.
    tie = graded_listwise_kl(q, t([[[1.0, 0.0], [-1.0, 0.0]]]), t([[2.0, 2.0]]), **kw)
    assert tie.item() == pytest.approx(0.0, abs=1e-6)


def test_wasserstein_padding_changes_nothing():
    q = t([[1.0, 0.0]])
    docs = t([[[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]]])
    base = graded_listwise_kl(q, docs[:, :2], t([[3.0, 1.0]]), temperature=0.5, distance="wasserstein")
    padded = graded_listwise_kl(
        q, docs, t([[3.0, 1.0, 9.0]]), temperature=0.5, distance="wasserstein", mask=torch.tensor([[True, True, False]])
    )
    assert padded.item() == pytest.approx(base.item(), abs=1e-6)


def test_losses_optimise_free_embeddings():
    torch.manual_seed(0)
    q = torch.randn(4, 8, requires_grad=True)
    docs = torch.randn(4, 3, 8, requires_grad=True)
    grades = t([[3.0, 1.0, 0.0]] * 4)
    opt = torch.optim.Adam([q, docs], lr=0.1)
    first = None
    for _ in range(40):
        qn, dn = F.normalize(q, dim=-1), F.normalize(docs, dim=-1)
        loss = info_nce(qn, dn[:, 0], dn[:, 1:], temperature=0.1) + graded_listwise_kl(qn, dn, grades, temperature=0.1)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_unknown_distance_is_rejected():
    with pytest.raises(ValueError):
        graded_listwise_kl(t([[1.0]]), t([[[1.0]]]), t([[1.0]]), distance="emd")
