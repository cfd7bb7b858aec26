"""Decoding helpers shared by the backends: prompt rendering, stop strings, seeds, normalisation.

Keeping these in one place is what makes the backends agree on *what a prompt is* (the cache
key uses the rendered prompt) and on how a choice distribution is normalised.

Example:
    >>> from retriever_forge.llm.decoding import truncate_at_stop, normalise_logprobs
    >>> truncate_at_stop("what is bm25?\\nwhy", ("\\n",))
    ('what is bm25?', True)
    >>> [round(x, 4) for x in normalise_logprobs([0.0, 0.0])]
    [-0.6931, -0.6931]
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence

log = logging.getLogger(__name__)

MISSING_LOGPROB = -100.0
"""Log-probability given to a choice a remote server did not report among its top tokens."""


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string; returns (text, whether a stop string was found)."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def derive_seed(seed: int, prompt: str) -> int:
    """A per-prompt sampling seed from the run seed and the prompt text.

    Seeding each prompt on its own (rather than each batch) makes a sample depend only on
    (prompt, params): the same whether the prompt is generated alone, in a batch of 32, or in
    the re-run of a crashed job whose cache already holds half the batch. Mixing in the prompt
    keeps the random streams of different prompts independent.
    """
    digest = hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def logsumexp(values: Sequence[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def normalise_logprobs(values: Sequence[float]) -> list[float]:
    """Shift log-probabilities so that they sum (in probability space) to one."""
    z = logsumexp(values)
    return [v - z for v in values]


def render_chat(tokenizer, prompt: str, chat_template: bool) -> str:
    """The text the model actually reads for a user-message ``prompt``.

    With ``chat_template`` and a tokenizer that has one, the prompt becomes the single user turn
    of a conversation and the assistant header is appended (``add_generation_prompt``);
    otherwise the prompt is used verbatim (plain completion).
    """
    if chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    return prompt


def encode_rendered(tokenizer, rendered: str, is_chat: bool, max_prompt_tokens: int) -> tuple[list[int], bool]:
    """Token ids of a rendered prompt, cut to ``max_prompt_tokens`` by dropping its middle.

    The chat template already holds the special tokens, so none are added for chat prompts.
    Over-long prompts lose their middle, not an end: the instruction (usually first) and the
    assistant header (always last) both survive, and the passage in between is what shrinks.
    Returns (ids, whether the prompt was truncated).
    """
    ids = tokenizer(rendered, add_special_tokens=not is_chat)["input_ids"]
    if len(ids) <= max_prompt_tokens:
        return list(ids), False
    head = max_prompt_tokens // 2
    tail = max_prompt_tokens - head
    return list(ids[:head]) + list(ids[len(ids) - tail :]), True


def first_token_ids(tokenizer, choices: Sequence[str]) -> list[int]:
    """The first token id of each choice as the start of an answer; they must be distinct."""
    if not choices:
        raise ValueError("choice_logprobs needs at least one choice")
    ids = []
    for choice in choices:
        toks = tokenizer(choice, add_special_tokens=False)["input_ids"]
        if not toks:
            raise ValueError(f"choice {choice!r} encodes to no token")
        ids.append(int(toks[0]))
    if len(set(ids)) != len(ids):
        clash = {c: i for c, i in zip(choices, ids, strict=True)}
        raise ValueError(f"choices must start with distinct tokens to be told apart: {clash}")
    return ids
