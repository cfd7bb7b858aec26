"""Encoding: sentence-transformers' vectors, token-length batching and per-text embedding reuse,
each checked against the plain result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_encoder import tiny_encoder_folder

import retriever_forge.encoding as encoding
from retriever_forge.encoding import encode, encode_cached, length_sorted_batches, load_encoder

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
