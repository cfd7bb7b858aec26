"""LLM server faults: a server that disappears mid-run fails the run with a clear error, and the
next run against a restarted server asks only for what the cache does not hold."""

from __future__ import annotations

import pytest

from retriever_forge.llm import CachedLLM, LLMRequestError, OpenAICompatibleLLM, SamplingParams
from tests.faults import helpers
from tests.llm.openai_server import SERVED_MODEL, OpenAITestServer

pytestmark = pytest.mark.faults

PROMPTS = [f"Write one search query for passage {i}." for i in range(12)]
PARAMS = SamplingParams(max_new_tokens=16)
CHAT = "/v1/chat/completions"


def _client(url: str, **kwargs) -> OpenAICompatibleLLM:
    return OpenAICompatibleLLM(url, SERVED_MODEL, **{"max_concurrency": 1, "max_retries": 2, "backoff_s": 0.01, "timeout_s": 5, **kwargs})


def test_server_that_disappears_mid_run_fails_clearly_and_the_rerun_resumes_from_the_cache(tmp_path):
    cache = tmp_path / "llm-cache.sqlite"
    server = OpenAITestServer(helpers.FakeServedModel()).start()
    host, port = server.url, server._httpd.server_address[1]
    batches = []

    def vanish_after_two_batches(message: str) -> None:
        batches.append(message)
        if len(batches) == 2:
            server.inject_faults(10**6, "drop")  # open keep-alive connections die with it
            server.stop()

    with CachedLLM(_client(host), cache, batch_size=3, progress=vanish_after_two_batches) as llm, \
            pytest.raises(LLMRequestError) as info:  # fmt: skip
        llm.generate(PROMPTS, PARAMS)
    message = str(info.value)
    assert f"{host}{CHAT} failed after 3 attempts" in message and "Connection" in message
    assert server.requests[CHAT] - server.faults_served["drop"] == 6  # two batches of three were answered, and committed

    restarted = OpenAITestServer(helpers.FakeServedModel(), port=port).start()  # same address, new process state
    try:
        with CachedLLM(_client(restarted.url), cache, batch_size=3) as llm:
            out = llm.generate(PROMPTS, PARAMS)
        assert restarted.requests[CHAT] == len(PROMPTS) - 6  # only the unfinished prompts were requested
        assert sum(g.cached for g in out) == 6
        assert [g.text for g in out] == [helpers.HashLLM.answer(p) for p in PROMPTS]
    finally:
        restarted.stop()


def test_a_judge_against_a_dead_server_fails_without_caching_anything(tmp_path):
    server = OpenAITestServer(helpers.FakeServedModel()).start()
    client = _client(server.url)
    assert len(client.weights_hash) == 64
    server.inject_faults(10**6, "500")
    with CachedLLM(client, tmp_path / "c.sqlite", batch_size=4) as llm:
        with pytest.raises(LLMRequestError, match=r"failed after 3 attempts; last error: HTTP 500"):
            llm.choice_logprobs(PROMPTS[:4], ["0", "1", "2", "3"])
        assert len(llm) == 0  # a failed batch is never stored as an answer
    server.clear_faults()
    with CachedLLM(client, tmp_path / "c.sqlite", batch_size=4) as llm:
        rows = llm.choice_logprobs(PROMPTS[:4], ["0", "1", "2", "3"])
    assert len(rows) == 4 and all(len(r) == 4 for r in rows)
    server.stop()
