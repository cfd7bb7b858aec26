"""The fast paths: token-length batching, per-text embedding reuse, streamed/calibrated/sharded
indexes, and mining streamed to Parquet — each checked against the plain result."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch
from _tiny_encoder import tiny_encoder_folder

import retriever_forge.encoding as encoding
from retriever_forge.encoding import encode, encode_cached, length_sorted_batches, load_encoder
from retriever_forge.indexing import (
    IndexParams,
    build_corpus_index,
    build_index,
    build_sharded_index,
    load_corpus_index,
    merge_shards,
    search_corpus_index,
    shard_ranges,
    train_sharded,
)
from retriever_forge.mining import MiningConfig, mine_hard_negatives
from retriever_forge.orchestration.scaleout import index_shard_commands

TEXTS = [
    "sort the list",
    "a hash table maps each value to an index with a hash",
    "shortest path",
    "the parser returns a tree",
    "search the index for the query and return the passages that match it in the table",
    "graph",
    "train the model on data",
] * 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_encoder(tiny_encoder_folder(tmp_path_factory.mktemp("tiny")), device="cpu")
    torch.set_num_threads(before)


def test_encode_matches_sentence_transformers_and_writes_into_out(tiny, tmp_path):
    reference = tiny.model.encode(TEXTS, batch_size=4, normalize_embeddings=True, convert_to_numpy=True)
    ours = encode(tiny, TEXTS, batch_size=4)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    out = np.lib.format.open_memmap(tmp_path / "e.npy", mode="w+", dtype=np.float32, shape=(len(TEXTS), tiny.dimension))
    assert encode(tiny, TEXTS, batch_size=3, out=out) is out
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), reference, atol=1e-5)
    assert encode(tiny, [], batch_size=3).shape == (0, tiny.dimension)


def test_batches_group_equal_token_lengths():
    lengths = np.array([5, 50, 6, 49, 7, 48])
    batches = length_sorted_batches(lengths, 2)
    assert [sorted(lengths[b].tolist()) for b in batches] == [[49, 50], [7, 48], [5, 6]]


def test_encode_cached_encodes_only_changed_texts(tiny, tmp_path, monkeypatch):
    seen: list[int] = []
    real = encoding.encode

    def counting(encoder, texts, *args, **kwargs):
        seen.append(len(texts))
        return real(encoder, texts, *args, **kwargs)

    monkeypatch.setattr(encoding, "encode", counting)
    texts = [f"{t} {i}" for i, t in enumerate(TEXTS)]
    first = encode_cached(tiny, texts, tmp_path)
    assert isinstance(first, np.memmap) and seen == [len(texts)]
    changed = texts[:10] + ["a new passage about graph search"] + texts[11:] + ["one more passage"]
    second = encode_cached(tiny, changed, tmp_path)
    assert seen == [len(texts), 2]  # the edited passage and the added one, nothing else
    np.testing.assert_allclose(second, real(tiny, changed), atol=1e-5)
    again = encode_cached(tiny, changed, tmp_path)
    assert seen == [len(texts), 2] and np.array_equal(again, second)


def _clustered(n=3000, dim=32, centers=30, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim))
    x = c[rng.integers(0, centers, n)] + 0.6 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _recall(index, queries, exact, k):
    _, got = index.search(queries, k)
    return np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(got, exact, strict=True)])


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_calibration_reaches_the_recall_target(kind):
    x = _clustered()
    queries = _clustered(200, seed=1)
    flat, _ = build_index(x, "flat")
    _, exact = flat.search(queries, 50)
    loose, _ = build_index(x, kind, params=IndexParams(target_recall=None, nprobe=1, ef_search=16))
    tuned, _ = build_index(
        x, kind, params=IndexParams(target_recall=0.97, calibration_k=50, nprobe=1, ef_search=16), calibration_queries=queries
    )
    assert _recall(tuned, queries, exact, 50) >= 0.97 > _recall(loose, queries, exact, 50)


def test_ivfpq_and_streamed_build_round_trip(tmp_path):
    x = _clustered(4000, dim=32)
    meta = build_corpus_index(x, [f"d{i}" for i in range(len(x))], tmp_path / "pq", index_type="ivfpq", params=IndexParams(pq_m=8))
    assert meta["index_type"] == "ivfpq" and meta["pq_m"] == 8
    index = load_corpus_index(tmp_path / "pq")
    hits = search_corpus_index(index, x[:20], [f"q{i}" for i in range(20)], k=5, chunk_size=7)
    assert sum(f"d{i}" in hits[f"q{i}"] for i in range(20)) >= 18


def test_sharded_on_disk_index_matches_and_survives_a_move(tmp_path):
    x = _clustered(3000)
    ids = [f"d{i}" for i in range(len(x))]
    params = IndexParams(nprobe=64)
    meta = build_sharded_index(x, ids, tmp_path / "a", shards=3, index_type="ivf", params=params)
    assert meta["on_disk"] and meta["shards"] == 3 and meta["vectors"] == len(x)
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))  # artifact stores copy folders around
    index = load_corpus_index(tmp_path / "b")
    single, _ = build_index(x, "ivf", params=IndexParams(nprobe=64, target_recall=None))
    _, want = single.search(x[:50], 10)
    got = search_corpus_index(index, x[:50], [str(i) for i in range(50)], k=10)
    assert all(list(got[str(i)]) == [ids[j] for j in want[i]] for i in range(50))


def test_shard_commands_run_as_separate_processes(tmp_path):
    x = _clustered(2000)
    np.save(tmp_path / "emb.npy", x)
    ids = [f"d{i}" for i in range(len(x))]
    folder = tmp_path / "idx"
    trained = train_sharded(x, folder / "shards", "ivf", IndexParams(nprobe=8))
    commands = index_shard_commands(tmp_path / "emb.npy", folder, len(x), shards=2, python=sys.executable)
    assert [c[-3:-1] for c in commands] == [[str(s), str(e)] for s, e in shard_ranges(len(x), 2)]
    for cmd in commands:
        subprocess.run(cmd, check=True, capture_output=True)
    merge_shards(trained, sorted((folder / "shards").glob("shard-*.faiss")), ids, folder, "ivf")
    hits = search_corpus_index(load_corpus_index(folder), x[:10], [str(i) for i in range(10)], k=1)
    assert [next(iter(hits[str(i)])) for i in range(10)] == ids[:10]


def test_mining_streamed_to_parquet_equals_in_memory(tmp_path):
    corpus = _clustered(500)
    queries = _clustered(120, seed=3)
    doc_ids = [f"d{i}" for i in range(len(corpus))]
    q_ids = [f"q{i}" for i in range(len(queries))]
    positives = [doc_ids[int(np.argmax(corpus @ q))] for q in queries]
    cfg = MiningConfig(rank_start=2, rank_end=30, negatives_per_query=4, judge_threshold=None, query_chunk_size=50)
    in_memory = mine_hard_negatives(queries, corpus, q_ids, positives, doc_ids, cfg)
    streamed = mine_hard_negatives(queries, corpus, q_ids, positives, doc_ids, cfg, sink=tmp_path / "c.parquet")
    assert isinstance(streamed, pl.LazyFrame)
    assert streamed.collect().equals(in_memory)
    assert not list(tmp_path.glob("*.tmp"))
