"""Fixtures for the LLM backend suite: one real model, shared by every backend under test.

* ``smollm`` — :class:`TransformersLLM` on the bundled SmolLM2-135M-Instruct Q4_1 GGUF, loaded
  once per session (the first load ever converts the GGUF, ~30 s; later loads take ~1 s);
* ``openai_server`` — a real OpenAI-compatible HTTP server on 127.0.0.1 serving that model;
* ``vllm_llm`` — the same weights in ``vllm.LLM``, only where vLLM is importable (run the suite
  with ``.venv-vllm/bin/python -m pytest tests/llm -k vllm``).

``backend`` is parametrised over the three, so every behavioural test runs against each.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for `import openai_server` in any import mode

from openai_server import SERVED_MODEL, OpenAITestServer  # noqa: E402

from retriever_forge.llm import (  # noqa: E402
    OpenAICompatibleLLM,
    TransformersLLM,
    VLLMBackend,
    default_generator_path,
    vllm_available,
)


@pytest.fixture(scope="module", autouse=True)
def torch_threads():
    """Run the LLM tests on ``$RF_TEST_TORCH_THREADS`` (default 1) torch threads, then restore.

    On a busy two-core machine, two OpenMP threads spin-waiting for a core made decoding 10x
    slower than one thread; one thread is the robust choice for a test suite. Restored after
    each module so other tests keep the process default.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("RF_TEST_TORCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm() -> TransformersLLM:
    try:
        default_generator_path()
    except FileNotFoundError as exc:  # the package is part of `make setup`; say so plainly
        pytest.fail(str(exc))
    # float32: the suite asserts that a prompt's output does not depend on its batch neighbours,
    # which holds for float32 kernels but not for bfloat16 ones (the CPU default where the CPU
    # has native bf16). For bfloat16, CachedLLM's fixed groups give the same guarantee across
    # resumed runs; test_llm_cache.py covers it.
    llm = TransformersLLM.default(batch_size=8, dtype="float32")
    llm.load()
    return llm


@pytest.fixture(scope="session")
def openai_server(smollm):
    with OpenAITestServer(smollm, model_name=SERVED_MODEL) as server:
        yield server


@pytest.fixture
def openai_llm(openai_server) -> OpenAICompatibleLLM:
    return OpenAICompatibleLLM(openai_server.url, SERVED_MODEL, max_concurrency=4, timeout_s=30, backoff_s=0.01)


@pytest.fixture(scope="session")
def vllm_llm():
    if not vllm_available():
        pytest.skip("vllm is not installed here (see scripts/setup_vllm_env.sh)")
    folder, name = default_generator_path()
    llm = VLLMBackend(
        folder,
        gguf_file=name,
        max_model_len=1024,
        enforce_eager=True,  # skip torch.compile warm-up: minutes on two cores, for a test
        # A small token budget per step, so a batch of a few prompts already needs several
        # scheduler steps (the case that once crashed seeded sampling on CPU).
        llm_kwargs={"max_num_batched_tokens": 1024},
    )
    llm.load()
    return llm


@pytest.fixture(params=["transformers", "openai", "vllm"])
def backend(request):
    """Each backend in turn, all serving the same SmolLM2 weights."""
    if request.param == "transformers":
        return request.getfixturevalue("smollm")
    if request.param == "openai":
        return request.getfixturevalue("openai_llm")
    return request.getfixturevalue("vllm_llm")
