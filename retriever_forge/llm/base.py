"""The small interface every LLM backend implements.

Two operations cover the pipeline's needs:

* :meth:`LLMBackend.generate` — batched free-text generation (synthetic queries);
* :meth:`LLMBackend.choice_logprobs` — scored choice among a fixed set of answers
  (graded relevance labels), so the judge's label never depends on parsing free text.

Prompts are *user messages*: chat models get them wrapped in their chat template by the
backend, so the same prompt file works for a local GGUF model, vLLM and a remote server.

Example:
    >>> from retriever_forge.llm.base import SamplingParams
    >>> SamplingParams(temperature=0.7, max_new_tokens=32, seed=3).cache_key()
    '{"max_new_tokens":32,"seed":3,"stop":[],"temperature":0.7,"top_p":1.0}'
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

from retriever_forge.llm.decoding import encode_rendered, render_chat
from retriever_forge.llm.weights import local_weights_hash


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings; part of every generation's cache key and provenance record."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    def cache_key(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Generation:
    """One completion, with the token counts needed for throughput metadata."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False


@runtime_checkable
class LLMBackend(Protocol):
    """What the query generator and the judge need from an LLM."""

    model_id: str
    """Human-readable model name (hub id, path or served name)."""

    @property
    def weights_hash(self) -> str:
        """Content hash of the weights (or of the served model's identity for remote backends)."""
        ...

    # Backends may also expose ``numerics`` (str): the dtype the weights are computed in. When
    # present it joins the cache key and the provenance record (see CachedLLM), because the same
    # weights in bfloat16 and float32 do not give identical outputs.

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        """Complete every prompt; output order matches input order."""
        ...

    def choice_logprobs(self, prompts: list[str], choices: list[str]) -> list[list[float]]:
        """For each prompt, log-probabilities of each choice as the start of the answer.

        The result is normalised over ``choices`` (``logsumexp == 0``), so it can be read as
        the model's label distribution restricted to the allowed labels.
        """
        ...


class LocalWeightsLLM:
    """What the in-process backends (transformers, vLLM) share: weights identity and prompt encoding.

    A subclass sets ``model_path``, ``gguf_file``, ``chat_template``, ``max_prompt_tokens``,
    ``truncated_prompts = 0`` and ``_weights_hash = None`` in its ``__init__`` and provides a
    ``tokenizer`` property. Both backends thus hash the same files and feed the model the same
    token ids for a prompt, so their cache keys and provenance records agree.
    """

    model_path: str
    gguf_file: str | None
    chat_template: bool
    max_prompt_tokens: int
    truncated_prompts: int
    _weights_hash: str | None

    @property
    def weights_hash(self) -> str:
        """sha256 of the GGUF file, or of the model folder's weights, config and tokenizer files."""
        if self._weights_hash is None:
            self._weights_hash = local_weights_hash(self.model_path, self.gguf_file)
        return self._weights_hash

    def render_prompt(self, prompt: str) -> str:
        """The exact text the model reads for ``prompt`` (chat-wrapped when enabled)."""
        return render_chat(self.tokenizer, prompt, self.chat_template)

    def _encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each rendered prompt, over-long ones cut in the middle (counted in
        ``truncated_prompts``, logged by the backend's module logger)."""
        tok = self.tokenizer
        is_chat = self.chat_template and bool(getattr(tok, "chat_template", None))
        encoded = []
        for prompt in prompts:
            ids, truncated = encode_rendered(tok, self.render_prompt(prompt), is_chat, self.max_prompt_tokens)
            if truncated:
                self.truncated_prompts += 1
                logging.getLogger(type(self).__module__).warning("prompt cut to %d tokens (middle dropped)", self.max_prompt_tokens)
            encoded.append(ids)
        return encoded
