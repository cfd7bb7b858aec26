import pytest

from retriever_forge.evaluation import score_run
from retriever_forge.fusion import choose_fusion, convex_combination, fuse, min_max_normalize, ranked, reciprocal_rank_fusion

BM25 = {"q1": {"a": 12.0, "b": 7.0, "c": 3.0}, "q2": {"x": 5.0}}
DENSE = {"q1": {"c": 0.9, "a": 0.8, "d": 0.1}, "q3": {"y": 0.4, "z": 0.2}}


def test_rrf_scores_match_the_formula_by_hand():
    fused = reciprocal_rank_fusion([BM25, DENSE], k=60)
    q1 = fused["q1"]
    assert q1["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert q1["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert q1["b"] == pytest.approx(1 / 62)
    assert q1["d"] == pytest.approx(1 / 63)
    assert ranked(q1) == ["a", "c", "b", "d"]


def test_rrf_keeps_queries_present_in_only_one_run():
    fused = reciprocal_rank_fusion([BM25, DENSE])
    assert set(fused) == {"q1", "q2", "q3"}
    assert fused["q2"] == {"x": pytest.approx(1 / 61)}
    assert ranked(fused["q3"]) == ["y", "z"]


def test_rrf_depth_cuts_inputs_and_output():
    # With depth 1 only each run's top document takes part: a (bm25) and c (dense), tied, id breaks it.
    fused = reciprocal_rank_fusion([BM25, DENSE], k=0, depth=1)
    assert fused["q1"] == {"a": 1.0}
    with pytest.raises(ValueError, match="depth"):
        reciprocal_rank_fusion([BM25], depth=0)


def test_rrf_ignores_score_scale():
    scaled = {q: {d: s * 1000 for d, s in docs.items()} for q, docs in BM25.items()}
    assert reciprocal_rank_fusion([scaled, DENSE]) == reciprocal_rank_fusion([BM25, DENSE])


def test_min_max_normalize_bounds_and_constant_run():
    assert min_max_normalize({"a": 12.0, "b": 7.0, "c": 2.0}) == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert min_max_normalize({"a": 3.0, "b": 3.0}) == {"a": 1.0, "b": 1.0}
    assert min_max_normalize({}) == {}


def test_convex_combination_by_hand():
    fused = convex_combination([BM25, DENSE], [0.25, 0.75])["q1"]
    # bm25 normalised: a 1, b 4/9, c 0; dense normalised: c 1, a 7/8, d 0
    assert fused["a"] == pytest.approx(0.25 * 1 + 0.75 * 7 / 8)
    assert fused["b"] == pytest.approx(0.25 * 4 / 9)
    assert fused["c"] == pytest.approx(0.75 * 1)
    assert fused["d"] == pytest.approx(0.0)
    assert ranked(fused) == ["a", "c", "b", "d"]


def test_convex_combination_endpoints_reproduce_each_run_order():
    # the last-ranked document of a run normalises to 0, like a document the run never retrieved
    assert ranked(convex_combination([BM25, DENSE], [1.0, 0.0])["q1"])[:2] == ["a", "b"]
    assert ranked(convex_combination([BM25, DENSE], [0.0, 1.0])["q1"])[:2] == ["c", "a"]


def test_convex_combination_rejects_bad_weights():
    with pytest.raises(ValueError, match="sum to 1"):
        convex_combination([BM25, DENSE], [0.5, 0.6])
    with pytest.raises(ValueError, match="2 runs but 1 weights"):
        convex_combination([BM25, DENSE], [1.0])


def test_fuse_dispatches_a_recorded_method():
    assert fuse([BM25, DENSE], "rrf", {"k": 60}) == reciprocal_rank_fusion([BM25, DENSE], k=60)
    assert fuse([BM25, DENSE], "convex", {"weights": [0.3, 0.7]}) == convex_combination([BM25, DENSE], [0.3, 0.7])
    with pytest.raises(ValueError, match="unknown fusion method"):
        fuse([BM25], "borda", {})


def test_choose_fusion_picks_the_best_dev_candidate_and_records_all():
    # q1's relevant doc r is top of the lexical run but last of the dense run; q2's is top of dense only.
    lexical = {"q1": {"r": 9.0, "x": 5.0, "y": 1.0}, "q2": {"s": 1.0, "u": 3.0, "v": 2.0}}
    dense = {"q1": {"x": 0.9, "y": 0.8, "r": 0.1}, "q2": {"s": 0.9, "u": 0.5, "v": 0.4}}
    choice = choose_fusion(lexical, dense, {"q1": {"r": 1}, "q2": {"s": 1}})
    assert choice["dev_queries"] == 2 and len(choice["dev_ndcg_cut_10"]) == 10
    best = max(choice["dev_ndcg_cut_10"].values())
    _, agg = score_run(fuse([lexical, dense], choice["method"], choice["params"]), {"q1": {"r": 1}, "q2": {"s": 1}})
    assert agg["ndcg_cut_10"] == best
    # only lexical evidence: the lexical-heavy end of the convex grid must win over RRF
    one_sided = choose_fusion({"q": {"r": 9.0, "x": 1.0, "y": 0.5}}, {"q": {"x": 0.9, "y": 0.8, "r": 0.1}}, {"q": {"r": 1}})
    assert one_sided["method"] == "convex" and one_sided["params"]["weights"][0] >= 0.5


def test_choose_fusion_without_dev_queries_falls_back_to_rrf():
    choice = choose_fusion(BM25, DENSE, {})
    assert choice["method"] == "rrf" and choice["params"] == {"k": 60} and choice["dev_queries"] == 0
