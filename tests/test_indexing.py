"""The corpus index: every index type round-trips through its files and finds the neighbours;
calibrated, streamed, IVF-PQ and sharded on-disk builds are checked against the plain result."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from retriever_forge.indexing import (
    IndexParams,
    build_corpus_index,
    build_index,
    build_search_index,
    build_sharded_index,
    load_corpus_index,
    merge_shards,
    shard_ranges,
    train_sharded,
)
from retriever_forge.orchestration.scaleout import index_shard_commands
from retriever_forge.search import dense_run, search_index
from tests.conftest import clustered_embeddings


def _recall(index, queries, exact, k):
    _, got = index.search(queries, k)
    return np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(got, exact, strict=True)])


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_index_types_round_trip_through_files(tmp_path, index_type):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2000, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(2000)]
    meta = build_corpus_index(emb, ids, tmp_path, index_type=index_type)
    index = load_corpus_index(tmp_path)
    run = dense_run(emb[:20], index.index, [f"q{i}" for i in range(20)], index.doc_ids, k=10)
    hits = sum(max(r, key=r.get) == ids[i] for i, r in enumerate(run.values()))
    assert meta["index_type"] == index_type and hits >= 18
    assert not list(tmp_path.glob("*.pkl"))


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_search_indexes_find_exact_neighbours_on_easy_data(kind):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = build_search_index(x, kind, params=IndexParams(nprobe=64))
    scores, ids = search_index(index, x[:5], 3)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_calibration_reaches_the_recall_target(kind):
    x = clustered_embeddings()
    queries = clustered_embeddings(200, seed=1)
    flat, _ = build_index(x, "flat")
    _, exact = flat.search(queries, 50)
    loose, _ = build_index(x, kind, params=IndexParams(target_recall=None, nprobe=1, ef_search=16))
    tuned, _ = build_index(
        x, kind, params=IndexParams(target_recall=0.97, calibration_k=50, nprobe=1, ef_search=16), calibration_queries=queries
    )
    assert _recall(tuned, queries, exact, 50) >= 0.97 > _recall(loose, queries, exact, 50)


def test_ivfpq_and_streamed_build_round_trip(tmp_path):
    x = clustered_embeddings(4000, dim=32)
    meta = build_corpus_index(x, [f"d{i}" for i in range(len(x))], tmp_path / "pq", index_type="ivfpq", params=IndexParams(pq_m=8))
    assert meta["index_type"] == "ivfpq" and meta["pq_m"] == 8
    index = load_corpus_index(tmp_path / "pq")
    hits = dense_run(x[:20], index.index, [f"q{i}" for i in range(20)], index.doc_ids, k=5)
    assert sum(f"d{i}" in hits[f"q{i}"] for i in range(20)) >= 18


def test_sharded_on_disk_index_matches_and_survives_a_move(tmp_path):
    x = clustered_embeddings(3000)
    ids = [f"d{i}" for i in range(len(x))]
    params = IndexParams(nprobe=64)
    meta = build_sharded_index(x, ids, tmp_path / "a", shards=3, index_type="ivf", params=params)
    assert meta["on_disk"] and meta["shards"] == 3 and meta["vectors"] == len(x)
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))  # artifact stores copy folders around
    index = load_corpus_index(tmp_path / "b")
    single, _ = build_index(x, "ivf", params=IndexParams(nprobe=64, target_recall=None))
    _, want = single.search(x[:50], 10)
    got = dense_run(x[:50], index.index, [str(i) for i in range(50)], index.doc_ids, k=10)
    assert all(list(got[str(i)]) == [ids[j] for j in want[i]] for i in range(50))


def test_shard_commands_run_as_separate_processes(tmp_path):
    x = clustered_embeddings(2000)
    np.save(tmp_path / "emb.npy", x)
    ids = [f"d{i}" for i in range(len(x))]
    folder = tmp_path / "idx"
    trained = train_sharded(x, folder / "shards", "ivf", IndexParams(nprobe=8))
    commands = index_shard_commands(tmp_path / "emb.npy", folder, len(x), shards=2, python=sys.executable)
    assert [c[-3:-1] for c in commands] == [[str(s), str(e)] for s, e in shard_ranges(len(x), 2)]
    for cmd in commands:
        subprocess.run(cmd, check=True, capture_output=True)
    merge_shards(trained, sorted((folder / "shards").glob("shard-*.faiss")), ids, folder, "ivf")
    index = load_corpus_index(folder)
    hits = dense_run(x[:10], index.index, [str(i) for i in range(10)], index.doc_ids, k=1)
    assert [next(iter(hits[str(i)])) for i in range(10)] == ids[:10]
