"""Hard-negative mining: each filter on tiny inputs with known answers.

Embeddings are hand-made 2-D/3-D unit vectors, so every score is a cosine we can write down.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from retriever_forge.datasets import passage_text, passage_text_expr
from retriever_forge.lexical import BM25Index
from retriever_forge.mining import MiningConfig, build_training_examples, mine_hard_negatives, mining_summary
from retriever_forge.schemas import HARD_NEGATIVE_CANDIDATES, TRAINING_EXAMPLES, check_schema
from tests.conftest import clustered_embeddings


def unit(*angles_deg: float) -> np.ndarray:
    """2-D unit vectors at the given angles: the cosine with [1, 0] is cos(angle)."""
    a = np.radians(angles_deg)
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


# One query along [1, 0]; docs at these angles have scores cos(angle):
#   d0 0deg -> 1.000 | d1 10deg -> 0.985 | d2 20deg -> 0.940 | d3 30deg -> 0.866
#   d4 40deg -> 0.766 | d5 50deg -> 0.643 | d6 60deg -> 0.500 | d7 70deg -> 0.342
ANGLES = [0, 10, 20, 30, 40, 50, 60, 70]
DOCS = [f"d{i}" for i in range(len(ANGLES))]
QUERY = np.array([[1.0, 0.0]], dtype=np.float32)
OFF = dict(relative_margin=None, absolute_margin=None, judge_threshold=None, judge_margin=None)


def mine(positive: str = "d2", **cfg) -> pl.DataFrame:
    config = MiningConfig(**{"rank_start": 1, "rank_end": 8, "negatives_per_query": 8, **OFF, **cfg})
    judgments = cfg.pop("judgments", None) if "judgments" in cfg else None
    return mine_hard_negatives(QUERY, unit(*ANGLES), ["q"], [positive], DOCS, config, judgments=judgments)


def reasons(df: pl.DataFrame) -> dict[str, str | None]:
    return dict(zip(df["doc_id"], df["dropped_by"], strict=True))


def test_schema_ranks_scores_and_positive_score():
    df = mine()
    assert check_schema(df, HARD_NEGATIVE_CANDIDATES, "candidates") == []
    assert df.columns == list(HARD_NEGATIVE_CANDIDATES)
    assert df["doc_id"].to_list() == DOCS and df["rank"].to_list() == list(range(1, 9))
    np.testing.assert_allclose(df["score"].to_numpy(), np.cos(np.radians(ANGLES)), atol=1e-6)
    np.testing.assert_allclose(df["positive_score"].to_numpy(), np.cos(np.radians(20)), atol=1e-6)
    assert set(df["source"]) == {"dense"} and df["judged_grade"].null_count() == 8


def test_positive_is_excluded_wherever_it_ranks():
    r = reasons(mine(positive="d2"))
    assert r["d2"] == "positive" and all(v is None for k, v in r.items() if k != "d2")


def test_window_keeps_ranks_start_to_end_only():
    df = mine(positive="d7", rank_start=3, rank_end=5)
    assert df["rank"].to_list() == [1, 2, 3, 4, 5]  # ranks past rank_end are never retrieved
    assert reasons(df) == {"d0": "window", "d1": "window", "d2": None, "d3": None, "d4": None}


def test_relative_margin_drops_scores_above_fraction_of_positive():
    # positive d1 scores 0.985; 0.95 * 0.985 = 0.9355: d0 (1.0) and d2 (0.940) are too close.
    r = reasons(mine(positive="d1", relative_margin=0.95))
    assert r == {"d0": "margin", "d1": "positive", "d2": "margin", "d3": None, "d4": None, "d5": None, "d6": None, "d7": None}


def test_absolute_margin_drops_scores_above_positive_minus_margin():
    # positive d3 scores 0.866; 0.866 - 0.2 = 0.666: d0..d4 (>= 0.766) dropped, d5 (0.643) kept.
    r = reasons(mine(positive="d3", absolute_margin=0.2))
    assert [k for k, v in r.items() if v == "margin"] == ["d0", "d1", "d2", "d4"]
    assert r["d3"] == "positive" and r["d5"] is None


def test_judge_filter_drops_expected_grade_at_or_above_threshold():
    judgments = pl.DataFrame({"query_id": ["q"] * 3, "doc_id": ["d4", "d5", "d6"], "expected_grade": [2.0, 1.99, 3.0]})
    config = MiningConfig(rank_start=1, rank_end=8, negatives_per_query=8, **{**OFF, "judge_threshold": 2.0})
    df = mine_hard_negatives(QUERY, unit(*ANGLES), ["q"], ["d0"], DOCS, config, judgments=judgments)
    r = reasons(df)
    assert r["d4"] == "judge" and r["d6"] == "judge" and r["d5"] is None
    grades = dict(zip(df["doc_id"], df["judged_grade"], strict=True))
    assert grades["d5"] == pytest.approx(1.99) and grades["d7"] is None


def test_positive_aware_judge_drops_candidates_graded_near_the_positive():
    # The judge gave the positive d0 0.8: with judge_margin 1.0, d4 (0.8) and d6 (0.95) are
    # judged at least as relevant and dropped; d5 (0.7) stays, and unjudged d7 is not touched.
    judgments = pl.DataFrame({"query_id": ["q"] * 4, "doc_id": ["d0", "d4", "d5", "d6"], "expected_grade": [0.8, 0.8, 0.7, 0.95]})
    config = MiningConfig(rank_start=1, rank_end=8, negatives_per_query=8, **{**OFF, "judge_margin": 1.0})
    r = reasons(mine_hard_negatives(QUERY, unit(*ANGLES), ["q"], ["d0"], DOCS, config, judgments=judgments))
    assert [k for k, v in r.items() if v == "judge"] == ["d4", "d6"] and r["d7"] is None
    looser = MiningConfig(rank_start=1, rank_end=8, negatives_per_query=8, **{**OFF, "judge_margin": 1.1})
    r = reasons(mine_hard_negatives(QUERY, unit(*ANGLES), ["q"], ["d0"], DOCS, looser, judgments=judgments))
    assert [k for k, v in r.items() if v == "judge"] == ["d6"]  # 0.95 >= 1.1 * 0.8 = 0.88
    # No judged positive, no anchor: nothing is dropped.
    r = reasons(
        mine_hard_negatives(QUERY, unit(*ANGLES), ["q"], ["d0"], DOCS, config, judgments=judgments.filter(pl.col("doc_id") != "d0"))
    )
    assert "judge" not in r.values()


def test_judgments_off_records_grades_but_drops_nothing():
    judgments = pl.DataFrame({"query_id": ["q"], "doc_id": ["d4"], "expected_grade": [3.0]})
    config = MiningConfig(rank_start=1, rank_end=8, negatives_per_query=8, **OFF)
    df = mine_hard_negatives(QUERY, unit(*ANGLES), ["q"], ["d0"], DOCS, config, judgments=judgments)
    assert reasons(df)["d4"] is None and df.filter(pl.col("doc_id") == "d4")["judged_grade"].item() == 3.0


def test_guide_filter_drops_candidates_the_guide_prefers_to_the_positive():
    # Guide space: query along [1, 0]; positive d0 at 45deg (0.707). d3 at 30deg (0.866) and
    # d6 at 0deg (1.0) beat it, so they are likely unlabelled positives.
    guide_docs = unit(45, 80, 80, 30, 80, 80, 0, 80)
    config = MiningConfig(rank_start=1, rank_end=8, negatives_per_query=8, use_guide=True, **OFF)
    df = mine_hard_negatives(QUERY, unit(*ANGLES), ["q"], ["d0"], DOCS, config, guide=(QUERY, guide_docs))
    assert [k for k, v in reasons(df).items() if v == "guide"] == ["d3", "d6"]
    with pytest.raises(ValueError, match="guide"):
        mine_hard_negatives(QUERY, unit(*ANGLES), ["q"], ["d0"], DOCS, config)


def test_surplus_marks_kept_candidates_beyond_negatives_per_query():
    r = reasons(mine(positive="d1", negatives_per_query=3))
    assert r == {"d0": None, "d1": "positive", "d2": None, "d3": None, "d4": "surplus", "d5": "surplus", "d6": "surplus", "d7": "surplus"}


def test_filter_order_positive_margin_judge_guide_surplus():
    # d1 would fail margin, judge and guide at once: the first filter (margin) names it.
    judgments = pl.DataFrame({"query_id": ["q", "q"], "doc_id": ["d1", "d4"], "expected_grade": [3.0, 3.0]})
    guide_docs = unit(45, 0, 80, 80, 0, 0, 80, 80)  # guide prefers d1, d4, d5 to the positive d0
    config = MiningConfig(rank_start=1, rank_end=8, negatives_per_query=1, relative_margin=0.95, judge_threshold=2.0, use_guide=True)
    df = mine_hard_negatives(QUERY, unit(*ANGLES), ["q"], ["d0"], DOCS, config, judgments=judgments, guide=(QUERY, guide_docs))
    # positive d0 scores 1.0: only d1 (0.985) is above 0.95; d2 (0.940) is the one negative kept.
    assert reasons(df) == {
        "d0": "positive",
        "d1": "margin",
        "d2": None,
        "d3": "surplus",
        "d4": "judge",
        "d5": "guide",
        "d6": "surplus",
        "d7": "surplus",
    }


def test_several_queries_chunked_like_one_chunk():
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(50, 8)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries = corpus[:7] + 0.3 * rng.normal(size=(7, 8)).astype(np.float32)
    docs = [f"d{i}" for i in range(50)]
    args = (queries, corpus, [f"q{i}" for i in range(7)], docs[:7], docs)
    one = mine_hard_negatives(*args, MiningConfig(rank_start=2, rank_end=20, negatives_per_query=4, query_chunk_size=100))
    chunked = mine_hard_negatives(*args, MiningConfig(rank_start=2, rank_end=20, negatives_per_query=4, query_chunk_size=2))
    assert one.equals(chunked)
    kept = one.filter(pl.col("dropped_by").is_null()).group_by("query_id").len()
    assert kept["len"].max() <= 4
    assert one["query_id"].unique(maintain_order=True).to_list() == [f"q{i}" for i in range(7)]


def test_bm25_candidates_are_interleaved_and_deduplicated():
    texts = ["alpha beta", "beta gamma", "gamma delta", "delta epsilon", "alpha omega"]
    docs = ["a", "b", "c", "d", "e"]
    corpus = unit(0, 10, 20, 30, 80)  # dense ranks a, b, c, d, e
    bm25 = BM25Index(docs, texts)
    config = MiningConfig(rank_start=1, rank_end=2, negatives_per_query=10, bm25_candidates=2, **OFF)
    df = mine_hard_negatives(QUERY, corpus, ["q"], ["c"], docs, config, bm25=bm25, query_texts=["omega"])
    # Dense top-2 (a, b) plus BM25 hits for "omega": only e matches (b is already dense).
    assert df.select("doc_id", "source", "rank").rows() == [("a", "dense", 1), ("e", "bm25", 1), ("b", "dense", 2)]
    assert df.filter(pl.col("doc_id") == "e")["score"].item() == pytest.approx(np.cos(np.radians(80)), abs=1e-6)
    as_texts = mine_hard_negatives(QUERY, corpus, ["q"], ["c"], docs, config, bm25=(texts, ["omega"]))
    assert as_texts.equals(df)
    with pytest.raises(ValueError, match="bm25"):
        mine_hard_negatives(QUERY, corpus, ["q"], ["c"], docs, config)


def test_unknown_positive_is_an_error():
    with pytest.raises(ValueError, match="not in doc_ids"):
        mine(positive="nope")


def test_candidate_ranks_when_rank_end_exceeds_the_corpus():
    config = MiningConfig(rank_start=1, rank_end=10, negatives_per_query=10, **OFF)
    df = mine_hard_negatives(QUERY, unit(30, 0, 60), ["q"], ["y"], ["x", "y", "z"], config)
    assert df.select("query_id", "doc_id", "rank", "score").rows() == [
        ("q", "y", 1, pytest.approx(1.0)),
        ("q", "x", 2, pytest.approx(0.866, abs=1e-3)),
        ("q", "z", 3, pytest.approx(0.5)),
    ]


def test_mining_streamed_to_parquet_equals_in_memory(tmp_path):
    corpus = clustered_embeddings(500)
    queries = clustered_embeddings(120, seed=3)
    doc_ids = [f"d{i}" for i in range(len(corpus))]
    q_ids = [f"q{i}" for i in range(len(queries))]
    positives = [doc_ids[int(np.argmax(corpus @ q))] for q in queries]
    cfg = MiningConfig(rank_start=2, rank_end=30, negatives_per_query=4, judge_threshold=None, query_chunk_size=50)
    in_memory = mine_hard_negatives(queries, corpus, q_ids, positives, doc_ids, cfg)
    streamed = mine_hard_negatives(queries, corpus, q_ids, positives, doc_ids, cfg, sink=tmp_path / "c.parquet")
    assert isinstance(streamed, pl.LazyFrame)
    assert streamed.collect().equals(in_memory)
    assert not list(tmp_path.glob("*.tmp"))


def test_passage_text_convention_matches_expression():
    pairs = [("T", "body"), ("", "body"), ("T", ""), (None, "body"), ("  T ", None)]
    df = pl.DataFrame({"title": [p[0] for p in pairs], "text": [p[1] for p in pairs]})
    assert df.select(passage_text_expr().alias("p"))["p"].to_list() == [passage_text(t, x) for t, x in pairs]
    assert passage_text("T", "body") == "T: body"


def test_build_training_examples_orders_grades_and_skips():
    queries = pl.DataFrame(
        {
            "query_id": ["q1", "q2", "q3"],
            "doc_id": ["a", "b", "zz"],
            "text": ["first", "second", "orphan"],
            "split": ["train", "dev", "train"],
        }
    )
    corpus = pl.DataFrame({"doc_id": ["a", "b", "c", "d"], "title": ["A", "", "C", "D"], "text": ["aa", "bb", "cc", ""]})
    candidates = pl.DataFrame(
        {
            "query_id": ["q1", "q1", "q1", "q1"],
            "doc_id": ["d", "a", "c", "b"],
            "rank": [3, 1, 5, 7],
            "score": [0.8, 0.9, 0.6, 0.5],
            "judged_grade": [None, None, 1.5, None],
            "dropped_by": [None, "positive", None, "surplus"],
        }
    )
    judgments = pl.DataFrame({"query_id": ["q1", "q1"], "doc_id": ["a", "c"], "expected_grade": [2.5, 1.0]})
    ex = build_training_examples(queries, corpus, candidates, judgments)
    assert check_schema(ex, TRAINING_EXAMPLES, "examples") == [] and ex.columns == list(TRAINING_EXAMPLES)
    assert ex["query_id"].to_list() == ["q1", "q2"]  # q3's positive is not in the corpus
    q1 = ex.row(0, named=True)
    assert q1["negative_ids"] == ["d", "c"] and q1["negative_texts"] == ["D", "C: cc"]
    assert q1["negative_ranks"] == [3, 5] and q1["negative_scores"] == [0.8, 0.6]
    assert q1["negative_grades"] == [0.0, 1.0]  # the judgments given here win over judged_grade
    assert q1["positive_grade"] == 3.0 and q1["positive_text"] == "A: aa"  # the level it was written for
    q2 = ex.row(1, named=True)
    assert q2["negative_ids"] == [] and q2["positive_grade"] == 3.0 and q2["split"] == "dev" and q2["positive_text"] == "bb"
    judged = build_training_examples(queries, corpus, candidates, judgments, positive_grade=None)
    assert judged["positive_grade"].to_list() == [2.5, 3.0]  # the judge's grade; 3.0 where unjudged
    # Without judgments the candidates' judged_grade is used.
    assert build_training_examples(queries, corpus, candidates).row(0, named=True)["negative_grades"] == [0.0, 1.5]


def test_end_to_end_mined_rows_become_examples():
    corpus = pl.DataFrame({"doc_id": DOCS, "title": [f"T{i}" for i in range(8)], "text": ["x"] * 8})
    queries = pl.DataFrame({"query_id": ["q"], "doc_id": ["d0"], "text": ["query"], "split": ["train"]})
    cands = mine_hard_negatives(
        QUERY, unit(*ANGLES), ["q"], ["d0"], DOCS, MiningConfig(rank_start=2, rank_end=8, negatives_per_query=2, **OFF)
    )
    ex = build_training_examples(queries, corpus, cands)
    assert ex["negative_ids"].to_list() == [["d1", "d2"]]
    assert mining_summary(cands) == {"rows": 8, "queries": 1, "kept": 2, "kept_per_query": 2.0, "dropped_by": {"surplus": 5, "positive": 1}}


def test_config_validation():
    with pytest.raises(ValueError):
        MiningConfig(rank_start=0)
    with pytest.raises(ValueError):
        MiningConfig(rank_start=20, rank_end=10)
    with pytest.raises(ValueError):
        MiningConfig(index_type="annoy")
