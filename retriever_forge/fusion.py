"""Fusing retrieval runs: reciprocal rank fusion and a convex combination of normalised scores.

Runs are BEIR's ``{query_id: {doc_id: score}}``. Fusion is a few lines of arithmetic, written
here rather than taken from ``ranx`` because ranx pulls numba/llvmlite (a JIT compile on first
import) for what is a dictionary walk; the formulas follow ranx's ``rrf`` and ``wsum`` with
``min-max`` normalisation, so results can be checked against it.

Ties are broken by document id, so a fused run is a function of its inputs alone.

References:
    Cormack, Clarke, Büttcher (2009), "Reciprocal rank fusion outperforms Condorcet and
    individual rank learning methods", SIGIR — ``k = 60``.
    Bruch, Gai, Ingber (2023), "An analysis of fusion functions for hybrid retrieval", TOIS —
    the convex combination of min-max-normalised scores, its weight tuned on held-out queries.

Example:
    >>> from retriever_forge.fusion import reciprocal_rank_fusion
    >>> bm25 = {"q": {"a": 9.0, "b": 4.0}}
    >>> dense = {"q": {"b": 0.8, "c": 0.7}}
    >>> fused = reciprocal_rank_fusion([bm25, dense], k=1)
    >>> sorted(fused["q"], key=fused["q"].get, reverse=True)
    ['b', 'a', 'c']
"""

from __future__ import annotations

from collections.abc import Sequence

from retriever_forge.search import Run

FUSION_METHODS = ("rrf", "convex")


def ranked(scores: dict[str, float], depth: int | None = None) -> list[str]:
    """Document ids by descending score (ties by id), cut at ``depth``."""
    order = sorted(scores, key=lambda d: (-scores[d], d))
    return order if depth is None else order[:depth]


def _top(scores: dict[str, float], depth: int) -> dict[str, float]:
    return {d: scores[d] for d in ranked(scores, depth)}


def reciprocal_rank_fusion(runs: list[Run], k: int = 60, depth: int = 100) -> Run:
    """Reciprocal rank fusion: each document scores ``sum over runs of 1 / (k + rank)``.

    Args:
        runs: the runs to fuse; a query missing from a run contributes nothing from it.
        k: the smoothing constant (60 in the original paper); larger ``k`` flattens the
            advantage of the very top ranks.
        depth: each input run is cut to its top ``depth`` before fusing, and so is the output.

    Returns:
        The fused run over the union of the runs' query ids.
    """
    if k < 0 or depth < 1:
        raise ValueError(f"reciprocal_rank_fusion: need k >= 0 and depth >= 1, got k={k}, depth={depth}")
    fused: Run = {}
    for qid in sorted({q for run in runs for q in run}):
        acc: dict[str, float] = {}
        for run in runs:
            for rank, doc in enumerate(ranked(run.get(qid, {}), depth), start=1):
                acc[doc] = acc.get(doc, 0.0) + 1.0 / (k + rank)
        fused[qid] = _top(acc, depth)
    return fused


def min_max_normalize(scores: dict[str, float]) -> dict[str, float]:
    """Scores mapped onto [0, 1] per query; a query whose scores are all equal maps to 1."""
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    if hi == lo:
        return dict.fromkeys(scores, 1.0)
    return {d: (s - lo) / (hi - lo) for d, s in scores.items()}


def convex_combination(runs: list[Run], weights: Sequence[float], depth: int = 100) -> Run:
    """Weighted sum of per-query min-max-normalised scores (a document absent from a run scores 0 there).

    Args:
        runs: the runs to fuse, each cut to its top ``depth`` before normalising.
        weights: one non-negative weight per run, summing to 1 (``[w, 1 - w]`` for two runs).
        depth: cut for the inputs and the output.
    """
    if len(weights) != len(runs):
        raise ValueError(f"convex_combination: {len(runs)} runs but {len(weights)} weights")
    if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-9:
        raise ValueError(f"convex_combination: weights must be non-negative and sum to 1, got {list(weights)}")
    fused: Run = {}
    for qid in sorted({q for run in runs for q in run}):
        acc: dict[str, float] = {}
        for run, w in zip(runs, weights, strict=True):
            for doc, s in min_max_normalize(_top(run.get(qid, {}), depth)).items():
                acc[doc] = acc.get(doc, 0.0) + w * s
        fused[qid] = _top(acc, depth)
    return fused


def fuse(runs: list[Run], method: str, params: dict, depth: int = 100) -> Run:
    """Apply a recorded fusion (``{"method": ..., "params": ...}``) to runs: the one path serving and scoring share.

    ``rrf`` takes ``{"k": int}``; ``convex`` takes ``{"weights": [..]}``.
    """
    if method == "rrf":
        return reciprocal_rank_fusion(runs, k=int(params.get("k", 60)), depth=depth)
    if method == "convex":
        return convex_combination(runs, params["weights"], depth=depth)
    raise ValueError(f"unknown fusion method {method!r}; expected one of {FUSION_METHODS}")


RRF_K = 60
CONVEX_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # weight on the lexical run; both runs always count


def choose_fusion(lexical: Run, dense: Run, dev_qrels: dict[str, dict[str, int]], depth: int = 100,
                  rrf_k: int = RRF_K, convex_weights: Sequence[float] = CONVEX_WEIGHTS) -> dict:  # fmt: skip
    """Pick the fusion of a lexical and a dense run that scores best (nDCG@10) on dev queries.

    The candidates are RRF with ``rrf_k`` and the convex combination at each weight of
    ``convex_weights`` (on the lexical run). Ties go to RRF, then to the lower lexical weight.
    Called with the *synthetic dev* queries' runs and pseudo-qrels only, never the test qrels:
    the choice is part of the model, like a training hyper-parameter.

    Returns:
        ``{"method", "params", "runs": ["bm25", "dense"], "chosen_on", "dev_queries",
        "dev_ndcg_cut_10": {candidate: score}}``; apply it with :func:`fuse`.
    """
    from retriever_forge.evaluation import score_run

    base = {"runs": ["bm25", "dense"], "depth": depth, "chosen_on": "synthetic dev queries"}
    candidates = [("rrf", {"k": rrf_k})] + [("convex", {"weights": [w, round(1 - w, 6)]}) for w in convex_weights]
    qrels = {q: j for q, j in dev_qrels.items() if q in lexical or q in dense}
    if not qrels:
        return {**base, "method": "rrf", "params": {"k": rrf_k}, "dev_queries": 0, "dev_ndcg_cut_10": {},
                "note": "no judged dev queries: RRF's default k"}  # fmt: skip
    lexical = {q: lexical.get(q, {}) for q in qrels}
    dense = {q: dense.get(q, {}) for q in qrels}
    scores, best = {}, None
    for method, params in candidates:
        _, agg = score_run(fuse([lexical, dense], method, params, depth=depth), qrels)
        label = f"rrf(k={params['k']})" if method == "rrf" else f"convex(w_bm25={params['weights'][0]})"
        scores[label] = agg["ndcg_cut_10"]
        if best is None or agg["ndcg_cut_10"] > best[0]:
            best = (agg["ndcg_cut_10"], method, params)
    return {**base, "method": best[1], "params": best[2], "dev_queries": len(qrels), "dev_ndcg_cut_10": scores}
