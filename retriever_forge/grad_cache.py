"""Embeddings that carry gradients, with optional gradient caching to bound activation memory.

Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup"): the batch's embeddings are computed without a graph, the loss is computed on
them, and when it is back-propagated each chunk of texts is re-encoded with its recorded RNG
state (the same dropout) and back-propagated alone, so only one chunk's activations exist at
a time. Gradients equal the one-pass ones, for one extra forward pass.

Example (needs an encoder, so not a doctest)::

    emb = embed_with_gradients(model, texts, grad_cache_chunk=32)  # (len(texts), dim), input order
    loss_of(emb).backward()  # re-encodes 32 texts at a time
"""

from __future__ import annotations

import torch

from retriever_forge.checkpoints import rng_state, set_rng_state
from retriever_forge.encoding import embed_batch
from retriever_forge.numerics import autocast_device_type


def length_chunks(texts: list[str], chunk: int) -> list[list[int]]:
    """Row indices in chunks of at most ``chunk``, shortest texts (by characters) first.

    Grouping by length makes each chunk pad only to its own longest text (titles no longer pad
    to the longest abstract).

    >>> length_chunks(["a b c", "a", "a b c d e", "a b"], 2)
    [[1, 3], [0, 2]]
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[s : s + chunk] for s in range(0, len(order), chunk)]


def embed_with_gradients(model, texts: list[str], chunk: int = 64, grad_cache_chunk: int = 0) -> torch.Tensor:
    """L2-normalised embeddings of ``texts`` (rows in input order) that carry gradients.

    Args:
        model: a sentence-transformers model (in train mode for dropout).
        texts: the texts to embed.
        chunk: texts per forward pass without gradient caching (one graph for all of them).
        grad_cache_chunk: with more texts than this (> 0), gradient caching in chunks of this
            many texts: at most one chunk's activations exist at a time.

    Returns:
        A ``(len(texts), dim)`` float32 tensor on the model's device.
    """
    if grad_cache_chunk <= 0 or len(texts) <= grad_cache_chunk:
        chunks = length_chunks(texts, chunk)
        emb = torch.cat([embed_batch(model, [texts[i] for i in idx]) for idx in chunks])
        return _unsort(emb, [i for idx in chunks for i in idx])
    chunks = length_chunks(texts, grad_cache_chunk)
    rng_before, parts = [], []
    with torch.no_grad():
        for idx in chunks:
            rng_before.append(rng_state())
            parts.append(embed_batch(model, [texts[i] for i in idx]))
    device_type = autocast_device_type(str(parts[0].device))
    use_amp = torch.is_autocast_enabled(device_type)

    def replay(grad: torch.Tensor) -> None:
        # Runs inside the loss's backward pass: re-encode each chunk with gradients and push
        # its slice of the cached embedding gradient through the encoder.
        rng_now = rng_state()
        offset = 0
        for idx, state in zip(chunks, rng_before, strict=True):
            set_rng_state(state)
            with torch.enable_grad(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=use_amp):
                emb = embed_batch(model, [texts[i] for i in idx])
            torch.autograd.backward(emb, grad[offset : offset + len(idx)])
            offset += len(idx)
        set_rng_state(rng_now)  # the RNG stream goes on as if each chunk ran once

    anchor = torch.zeros((), device=parts[0].device, requires_grad=True)
    emb = _GradCacheReplay.apply(anchor, replay, torch.cat(parts))
    return _unsort(emb, [i for idx in chunks for i in idx])


def _unsort(emb: torch.Tensor, order: list[int]) -> torch.Tensor:
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return emb[inverse.to(emb.device)]


class _GradCacheReplay(torch.autograd.Function):
    """Identity on cached embeddings whose backward hands their gradient to ``replay``."""

    @staticmethod
    def forward(ctx, anchor, replay, emb):
        ctx.replay = replay
        return emb.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.replay(grad)
        return None, None, None
