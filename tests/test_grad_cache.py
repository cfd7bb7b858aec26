"""Gradient caching on a tiny random BERT (tests/_tiny_encoder.py): seconds."""

from __future__ import annotations

import pytest
import torch

from retriever_forge import grad_cache
from retriever_forge.encoding import encode_with_model
from retriever_forge.grad_cache import embed_with_gradients, length_chunks
from tests._tiny_encoder import tiny_encoder_folder

TEXTS = [
    "the shortest path in a graph",
    "hash",
    "a sorting algorithm returns a sorted list of numbers",
    "matrix",
    "the parser of the compiler",
    "a database table and its index",
    "vector search",
    "training a model on passages with queries",
    "file path",
    "the network",
    "string values in a list",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return tiny_encoder_folder(tmp_path_factory.mktemp("tiny"))


def _open(path: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu")


def test_length_chunks_cover_every_row_once_shortest_first():
    chunks = length_chunks(TEXTS, 4)
    assert [len(c) for c in chunks] == [4, 4, 3]
    assert sorted(i for c in chunks for i in c) == list(range(len(TEXTS)))
    lengths = [len(TEXTS[i]) for c in chunks for i in c]
    assert lengths == sorted(lengths)


@pytest.mark.parametrize("grad_cache_chunk", [0, 3])
def test_embeddings_are_in_input_order_and_match_inference(tiny_model, grad_cache_chunk):
    model = _open(tiny_model)
    expected = encode_with_model(model, TEXTS, batch_size=4, show_progress=False)  # eval mode: no dropout
    emb = embed_with_gradients(model, TEXTS, chunk=4, grad_cache_chunk=grad_cache_chunk)
    assert emb.shape == expected.shape and emb.requires_grad
    torch.testing.assert_close(emb.detach(), torch.from_numpy(expected), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(emb.detach().norm(dim=1), torch.ones(len(TEXTS)))


def test_grad_cache_gives_the_one_pass_gradients(tiny_model, monkeypatch):
    queries, passages = TEXTS[:5], TEXTS[5:] + TEXTS[:2]

    def grads(grad_cache_chunk: int, one_pass_chunk: int | None = None) -> tuple[float, dict, torch.Tensor]:
        model = _open(tiny_model)
        model.train()  # dropout on: the replay must reproduce each chunk's dropout mask
        torch.manual_seed(123)
        if one_pass_chunk:  # one graph, but in the grad-cache chunks (so the same dropout draws)
            original = grad_cache.length_chunks
            monkeypatch.setattr(grad_cache, "length_chunks", lambda texts, chunk: original(texts, one_pass_chunk))
        q = embed_with_gradients(model, queries, grad_cache_chunk=grad_cache_chunk)
        p = embed_with_gradients(model, passages, grad_cache_chunk=grad_cache_chunk)
        loss = torch.nn.functional.cross_entropy(q @ p.T / 0.05, torch.arange(len(queries)))
        loss.backward()
        monkeypatch.undo()
        return loss.item(), {n: w.grad.clone() for n, w in model.named_parameters() if w.grad is not None}, torch.get_rng_state()

    one_loss, one_grads, one_rng = grads(0, one_pass_chunk=3)
    gc_loss, gc_grads, gc_rng = grads(3)
    assert gc_loss == pytest.approx(one_loss, abs=1e-6)
    assert one_grads.keys() == gc_grads.keys() and len(one_grads) > 10
    for name, g in one_grads.items():
        torch.testing.assert_close(gc_grads[name], g, atol=1e-6, rtol=1e-4, msg=name)
    assert torch.equal(one_rng, gc_rng)  # the RNG stream continues as after one pass
