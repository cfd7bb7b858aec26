import itertools

import numpy as np
import pytest
from scipy import stats

from retriever_forge.evaluation import query_movers, score_systems, scoreboard_markdown
from retriever_forge.significance import best_relevant_rank, holm_adjust, judged_at_k, paired_comparison

TUNED = np.array([0.62, 0.80, 0.15, 0.91, 0.40, 0.55, 0.73, 0.30, 0.66, 0.48])
BASE = np.array([0.50, 0.71, 0.20, 0.85, 0.40, 0.35, 0.60, 0.31, 0.52, 0.45])


def test_randomization_p_value_matches_full_sign_flip_enumeration():
    diff = TUNED - BASE
    observed = abs(diff.mean())
    flips = np.array(list(itertools.product([1, -1], repeat=diff.size)))
    exact = float(np.mean(np.abs((flips * diff).mean(axis=1)) >= observed - 1e-12))
    c = paired_comparison(TUNED, BASE, seed=3)
    assert c["p_value"] == pytest.approx(exact, abs=1e-4)  # 2**10 < 10000 resamples: scipy enumerates


def test_randomization_is_seeded_when_sampled():
    rng = np.random.default_rng(0)
    a, b = rng.random(40), rng.random(40)
    assert paired_comparison(a, b, seed=7)["p_value"] == paired_comparison(a, b, seed=7)["p_value"]


def test_t_test_and_delta_match_textbook_formula():
    diff = TUNED - BASE
    t = diff.mean() / (diff.std(ddof=1) / np.sqrt(diff.size))
    p = 2 * stats.t.sf(abs(t), df=diff.size - 1)
    c = paired_comparison(TUNED, BASE)
    assert c["p_value_t"] == pytest.approx(p, abs=1e-4)
    assert c["delta"] == pytest.approx(diff.mean(), abs=1e-4)
    assert (c["wins"], c["ties"], c["losses"]) == (7, 1, 2)


def test_bootstrap_interval_matches_scipy_and_covers_delta():
    diff = TUNED - BASE
    ref = stats.bootstrap((diff,), np.mean, n_resamples=10_000, method="percentile", rng=np.random.default_rng(11))
    c = paired_comparison(TUNED, BASE, seed=11)
    low, high = c["ci95"]
    # same resampling scheme, independent draws: the percentile ends agree to Monte Carlo error
    assert low == pytest.approx(ref.confidence_interval.low, abs=0.01)
    assert high == pytest.approx(ref.confidence_interval.high, abs=0.01)
    assert low < c["delta"] < high


def test_identical_systems_are_not_different():
    c = paired_comparison(BASE, BASE)
    assert c["delta"] == 0.0 and c["p_value"] == 1.0 and c["ties"] == BASE.size and c["ci95"] == [0.0, 0.0]


def test_holm_adjustment_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(0.06, 1*0.04)
    assert holm_adjust([0.04, 0.01, 0.03]) == [0.06, 0.03, 0.06]
    assert holm_adjust([0.5, 0.9]) == [1.0, 1.0]


def test_judged_at_10_and_best_relevant_rank():
    run = {"q1": {f"d{i}": 10.0 - i for i in range(10)}, "q2": {}}
    qrels = {"q1": {"d0": 0, "d3": 2, "d99": 1}, "q2": {"x": 1}}
    assert judged_at_k(run, qrels, 10) == pytest.approx((2 / 10 + 0.0) / 2)
    assert best_relevant_rank(run["q1"], qrels["q1"]) == 4
    assert best_relevant_rank(run["q2"], qrels["q2"]) is None


def _board():
    qrels = {f"q{i}": {f"r{i}": 1} for i in range(6)}

    # base finds every relevant doc at rank 2, fine-tuned at rank 1 except q5 (rank 3); bm25 at rank 1 for half
    def run(rank_of):
        return {q: {**{f"x{j}": 10.0 - j for j in range(5)}, f"r{i}": 11.5 - rank_of(i)} for i, q in enumerate(qrels)}

    runs = {
        "bm25": run(lambda i: 1 if i % 2 else 4),
        "base": run(lambda i: 2),
        "fine-tuned": run(lambda i: 3 if i == 5 else 1),
        "hybrid-base": run(lambda i: 1 if i % 2 else 2),
        "hybrid": run(lambda i: 1),
    }
    return runs, qrels


def test_score_systems_rows_carry_the_comparisons_with_holm_over_distinct_pairs():
    runs, qrels = _board()
    table, rows = score_systems(runs, qrels, seed=0)
    by = {r["system"]: r for r in rows}
    keys = {"delta", "p_value", "p_value_holm", "ci95", "wins", "ties", "losses"}
    assert keys <= set(by["fine-tuned"]["vs_base"]) and keys <= set(by["hybrid"]["vs_hybrid_base"])
    assert "vs_base" not in by["base"] and "vs_bm25" not in by["bm25"] and "vs_hybrid_base" not in by["bm25"]
    assert by["fine-tuned"]["vs_base"]["wins"] == 5 and by["fine-tuned"]["vs_base"]["losses"] == 1
    # base-vs-bm25 is one test read from both sides
    assert by["bm25"]["vs_base"]["delta"] == -by["base"]["vs_bm25"]["delta"]
    assert by["bm25"]["vs_base"]["p_value_holm"] == by["base"]["vs_bm25"]["p_value_holm"]
    # distinct pairs: bm25-base, hb-base, hybrid-base, ft-base, ft-bm25, hb-bm25, hybrid-bm25, ft-hb, hybrid-hb
    raw = {(r["system"], k): r[k]["p_value"] for r in rows for k in ("vs_base", "vs_bm25", "vs_hybrid_base") if k in r}
    assert len({frozenset((s, {"vs_base": "base", "vs_bm25": "bm25", "vs_hybrid_base": "hybrid-base"}[k])) for s, k in raw}) == 9
    smallest = min(raw.values())
    assert min(r[k]["p_value_holm"] for r in rows for k in ("vs_base", "vs_bm25", "vs_hybrid_base") if k in r) == pytest.approx(
        min(1.0, 9 * smallest), abs=1e-4
    )
    assert all(0 < r["judged_at_10"] <= 1 for r in rows)
    assert table.height == 5 * 6


def test_query_movers_report_text_and_best_relevant_rank_before_and_after():
    runs, qrels = _board()
    table, _ = score_systems(runs, qrels)
    movers = query_movers(table, runs, qrels, {q: f"text of {q}" for q in qrels})
    assert len(movers["gained"]) == 5 and [m["query_id"] for m in movers["lost"]] == ["q5"]
    lost = movers["lost"][0]
    assert lost["text"] == "text of q5" and lost["best_relevant_rank"] == {"base": 2, "fine-tuned": 3} and lost["delta"] < 0


def _fine_tuned_row(**extra) -> dict:
    """A scoreboard row of the fine-tuned system with fixed scores, plus ``extra`` fields."""
    scores = {"ndcg_cut_10": 0.5, "recall_100": 1.0, "map": 0.4, "recip_rank": 0.6, "queries": 3, "judged_at_10": 0.5}
    return {"system": "fine-tuned", **scores, **extra}


def test_scoreboard_marks_significant_rows():
    row = _fine_tuned_row(vs_base={"delta": 0.1, "p_value_holm": 0.01}, vs_bm25={"delta": 0.02, "p_value_holm": 0.4})
    md = scoreboard_markdown([row], "human")
    assert "+0.1000 (p=0.010) **\\***" in md and "+0.0200 (p=0.400) |" in md


def test_scoreboard_labels_a_fine_tuned_row_that_kept_the_base_weights():
    row = _fine_tuned_row(kept_base_weights=True)
    assert "| fine-tuned (= base weights) |" in scoreboard_markdown([row], "human", notes=["training kept the base weights"])
