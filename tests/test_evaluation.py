import numpy as np
import polars as pl
import pytest

from retriever_forge.evaluation import bm25_run, dense_run, score_run, scoreboard_markdown
from retriever_forge.indexing import build_corpus_index, load_corpus_index, search_corpus_index
from tests.conftest import TINY_CORPUS

CORPUS = pl.DataFrame([{"doc_id": d["_id"], "title": d["title"], "text": d["text"]} for d in TINY_CORPUS])


def test_measures_match_hand_computed_values():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1, "d3": 1}}
    run = {"q1": {"d9": 3.0, "d1": 2.0}, "q2": {"d2": 3.0, "d3": 2.0}}
    per_query, agg = score_run(run, qrels)
    q1 = per_query.filter(query_id="q1").row(0, named=True)
    assert q1["recip_rank"] == 0.5 and q1["map"] == 0.5
    assert q1["ndcg_cut_10"] == pytest.approx(1 / np.log2(3))
    assert agg["recall_100"] == 1.0


def test_unretrieved_judged_query_scores_zero():
    per_query, agg = score_run({}, {"q1": {"d1": 1}})
    assert per_query.height == 1 and agg["ndcg_cut_10"] == 0.0


def test_bm25_ranks_the_matching_passage_first():
    run = bm25_run(CORPUS, pl.DataFrame({"query_id": ["q"], "text": ["shortest paths graphs"]}), k=3)
    assert max(run["q"], key=run["q"].get) == "d3"


def test_dense_run_and_index_agree():
    emb = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(50)]
    direct = dense_run(emb[:5], emb, [f"q{i}" for i in range(5)], ids, k=10)
    assert [max(r, key=r.get) for r in direct.values()] == ids[:5]


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_index_types_round_trip_through_files(tmp_path, index_type):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2000, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(2000)]
    meta = build_corpus_index(emb, ids, tmp_path, index_type=index_type)
    index = load_corpus_index(tmp_path)
    run = search_corpus_index(index, emb[:20], [f"q{i}" for i in range(20)], k=10)
    hits = sum(max(r, key=r.get) == ids[i] for i, r in enumerate(run.values()))
    assert meta["index_type"] == index_type and hits >= 18
    assert not list(tmp_path.glob("*.pkl"))


def test_scoreboard_labels_synthetic_judgments():
    rows = [{"system": "bm25", "ndcg_cut_10": 0.5, "recall_100": 1.0, "map": 0.4, "recip_rank": 0.6, "queries": 3}]
    assert "SYNTHETIC" in scoreboard_markdown(rows, "synthetic")
    assert "human" in scoreboard_markdown(rows, "human")
