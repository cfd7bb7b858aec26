"""Is one system better than another on these queries? Paired tests on per-query scores.

Per-query nDCG@10 of two systems on the same queries is a paired sample. For each comparison the
board reports the mean delta, a two-sided Fisher randomization (sign-flip permutation) test,
seeded, with the paired t-test beside it, a 95% percentile bootstrap interval of the delta, and
win/tie/loss counts. The randomization p-values of all the board's comparisons are Holm-corrected
together (Holm's step-down controls the family-wise error at any dependence between the tests).
The statistics come from ``scipy.stats``; ranx offers the same tests but pulls numba for them.

References:
    Smucker, Allan, Carterette (2007), "A comparison of statistical significance tests for
    information retrieval evaluation", CIKM — randomization and t-test agree; sign tests do not.
    Holm (1979), "A simple sequentially rejective multiple test procedure", Scand. J. Statistics.

Example:
    >>> import numpy as np
    >>> from retriever_forge.significance import paired_comparison
    >>> tuned, base = np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([0.5, 0.5, 0.7, 0.2, 0.4])
    >>> c = paired_comparison(tuned, base)
    >>> c["delta"], c["wins"], c["ties"], c["losses"], c["p_value"]
    (0.24, 4, 1, 0, 0.125)
"""

from __future__ import annotations

import warnings

import numpy as np

TIE_TOLERANCE = 1e-9  # per-query scores closer than this count as a tie
ALPHA = 0.05


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def paired_comparison(system: np.ndarray, reference: np.ndarray, *, seed: int = 0, n_resamples: int = 10_000) -> dict:
    """Compare per-query scores of ``system`` with ``reference`` (same queries, same order).

    Args:
        system, reference: per-query scores, aligned.
        seed: seeds the randomization test and the bootstrap (results are reproducible).
        n_resamples: sign flips / bootstrap resamples; with ``2**n <= n_resamples`` the
            randomization test enumerates every sign flip (exact).

    Returns:
        ``delta`` (mean of system - reference), ``p_value`` (randomization, two-sided),
        ``p_value_t`` (paired t-test), ``ci95`` ([low, high] of the delta), ``wins``/``ties``/
        ``losses`` (queries where system is above / within 1e-9 of / below the reference), ``queries``.
        ``p_value_holm`` is added by :func:`holm_adjust` once the board's comparisons are known.
    """
    from scipy import stats

    system, reference = np.asarray(system, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if system.shape != reference.shape or system.ndim != 1:
        raise ValueError(f"paired_comparison: need two aligned 1-d arrays, got shapes {system.shape} and {reference.shape}")
    diff = system - reference
    n = diff.size
    wins, losses = int((diff > TIE_TOLERANCE).sum()), int((diff < -TIE_TOLERANCE).sum())
    out = {"delta": round(float(diff.mean()), 4) if n else 0.0, "wins": wins, "ties": n - wins - losses, "losses": losses, "queries": n}
    if n < 2 or not np.any(np.abs(diff) > TIE_TOLERANCE):
        # Nothing to test: one query, or the systems score every query the same.
        return {**out, "p_value": 1.0, "p_value_t": 1.0, "ci95": [out["delta"], out["delta"]]}
    rng = np.random.default_rng(seed)
    perm = stats.permutation_test((diff,), _mean, permutation_type="samples", vectorized=True,
                                  n_resamples=n_resamples, alternative="two-sided", rng=rng)  # fmt: skip
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-constant deltas: scipy's precision note
        p_t = float(stats.ttest_rel(system, reference).pvalue)  # a constant non-zero delta: t is infinite, p 0
    boot = stats.bootstrap((diff,), _mean, vectorized=True, n_resamples=n_resamples, confidence_level=0.95,
                           method="percentile", rng=rng)  # fmt: skip
    ci = boot.confidence_interval
    return {**out, "p_value": round(float(perm.pvalue), 4), "p_value_t": round(p_t, 4) if np.isfinite(p_t) else 0.0,
            "ci95": [round(float(ci.low), 4), round(float(ci.high), 4)]}  # fmt: skip


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input's order.

    Example:
        >>> holm_adjust([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = round(running, 4)
    return adjusted


def judged_at_k(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], k: int = 10) -> float:
    """Share of each judged query's top ``k`` that has a judgment (any grade), averaged over queries.

    Low values mean the qrels have holes there: an unjudged document counts as non-relevant,
    so a system that retrieves unjudged documents is scored down whether or not they are relevant.
    A query that retrieves fewer than ``k`` documents is judged over what it retrieved.

    Example:
        >>> judged_at_k({"q": {"a": 3.0, "b": 2.0, "c": 1.0}}, {"q": {"a": 1, "c": 0}}, k=2)
        0.5
    """
    from retriever_forge.fusion import ranked

    shares = []
    for qid, judged in qrels.items():
        top = ranked(run.get(qid, {}), k)
        shares.append(sum(d in judged for d in top) / len(top) if top else 0.0)
    return round(float(np.mean(shares)), 4) if shares else 0.0


def best_relevant_rank(scores: dict[str, float], judged: dict[str, int]) -> int | None:
    """1-based rank of the highest-ranked relevant (grade > 0) document; None when none was retrieved.

    Example:
        >>> best_relevant_rank({"a": 3.0, "b": 2.0, "c": 1.0}, {"a": 0, "c": 2})
        3
    """
    from retriever_forge.fusion import ranked

    for rank, doc in enumerate(ranked(scores), start=1):
        if judged.get(doc, 0) > 0:
            return rank
    return None
