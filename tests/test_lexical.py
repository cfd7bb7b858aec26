"""BM25: one analyser (stopwords, Snowball stemming) for the benchmark and mining's candidates."""

from __future__ import annotations

import numpy as np
import polars as pl

from retriever_forge.datasets import passage_text
from retriever_forge.lexical import BM25Index, bm25_run, tokenize
from retriever_forge.mining import MiningConfig, mine_hard_negatives
from tests.conftest import TINY_CORPUS

CORPUS = pl.DataFrame([{"doc_id": d["_id"], "title": d["title"], "text": d["text"]} for d in TINY_CORPUS])


def test_bm25_ranks_the_matching_passage_first():
    run = bm25_run(CORPUS, pl.DataFrame({"query_id": ["q"], "text": ["shortest paths graphs"]}), k=3)
    assert max(run["q"], key=run["q"].get) == "d3"


def test_analyser_drops_stopwords_and_stems():
    assert tokenize(["The sorted arrays", "of the and"]) == [["sort", "array"], []]
    # "partitioning" finds "partitions" (d1) only through the stemmer.
    run = bm25_run(CORPUS, pl.DataFrame({"query_id": ["q", "stop"], "text": ["partitioning", "the of and"]}))
    assert list(run["q"]) == ["d1"] and run["stop"] == {}


def test_search_is_best_first_and_k_is_capped():
    bm = BM25Index(CORPUS["doc_id"].to_list(), [passage_text(t, x) for t, x in CORPUS.select("title", "text").iter_rows()])
    hits = bm.search(["balanced tree index keys"], 100)[0]
    assert list(hits)[0] == "d6" and len(hits) <= CORPUS.height
    assert list(hits.values()) == sorted(hits.values(), reverse=True)
    assert bm.search(["tree"], 0) == [{}] and bm.search([], 5) == []


def test_mining_candidates_are_the_benchmarks_bm25():
    doc_ids = CORPUS["doc_id"].to_list()
    texts = [passage_text(t, x) for t, x in CORPUS.select("title", "text").iter_rows()]
    query = "sorted keys lookups in a hash table"
    emb = np.eye(len(doc_ids), dtype=np.float32)
    cfg = MiningConfig(rank_start=1, rank_end=1, negatives_per_query=10, relative_margin=None, judge_threshold=None, bm25_candidates=3)
    df = mine_hard_negatives(emb[[4]], emb, ["q"], ["d5"], doc_ids, cfg, bm25=(texts, [query]))  # dense top-1: d5
    benchmark = bm25_run(CORPUS, pl.DataFrame({"query_id": ["q"], "text": [query]}), k=3)["q"]
    mined = df.filter(source="bm25").sort("rank")["doc_id"].to_list()
    assert mined == list(benchmark) == ["d2", "d6", "d1"]  # d1 ("sorts") only through the stemmer
