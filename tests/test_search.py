"""Dense search: exact and over FAISS indexes, arrays for mining and runs for the benchmark."""

from __future__ import annotations

import numpy as np

from retriever_forge.indexing import IndexParams, build_index
from retriever_forge.search import dense_run, exact_index, exact_search, hits_to_run, search_index
from tests.conftest import clustered_embeddings


def test_dense_run_and_index_agree():
    emb = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(50)]
    direct = dense_run(emb[:5], emb, [f"q{i}" for i in range(5)], ids, k=10)
    assert [max(r, key=r.get) for r in direct.values()] == ids[:5]
    assert dense_run(emb[:5], exact_index(emb), [f"q{i}" for i in range(5)], ids, k=10) == direct


def test_k_larger_than_the_corpus_returns_every_row_ranked():
    corpus = np.array([[np.cos(np.radians(a)), np.sin(np.radians(a))] for a in (30, 0, 60)], dtype=np.float32)
    scores, ids = exact_search(np.array([[1.0, 0.0]], np.float32), corpus, k=10)
    assert ids.tolist() == [[1, 0, 2]]
    np.testing.assert_allclose(scores, [[1.0, np.cos(np.radians(30)), 0.5]], atol=1e-6)


def test_chunked_search_equals_one_call():
    corpus, queries = clustered_embeddings(500), clustered_embeddings(50, seed=1)
    index = exact_index(corpus)
    whole = index.search(queries, 10)
    for got, want in zip(search_index(index, queries, 10, chunk_size=7), whole, strict=True):
        np.testing.assert_array_equal(got, want)


def test_hnsw_beam_grows_to_k():
    corpus = clustered_embeddings(2000)
    index, _ = build_index(corpus, "hnsw", params=IndexParams(ef_search=16, target_recall=None))
    _, ids = search_index(index, corpus[:5], 100)
    assert index.hnsw.efSearch == 100 and (ids >= 0).all()


def test_empty_queries_and_zero_k():
    index = exact_index(np.eye(3, dtype=np.float32))
    scores, ids = search_index(index, np.zeros((0, 3), np.float32), 5)
    assert scores.shape == ids.shape == (0, 3)
    assert search_index(index, np.eye(3, dtype=np.float32), 0)[1].shape == (3, 0)
    assert dense_run(np.zeros((0, 3), np.float32), index, [], ["a", "b", "c"]) == {}


def test_hits_to_run_skips_padding():
    run = hits_to_run(np.array([[0.9, 0.5, 0.0]]), np.array([[2, 0, -1]]), ["q"], ["a", "b", "c"])
    assert run == {"q": {"c": 0.9, "a": 0.5}}
