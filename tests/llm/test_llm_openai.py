"""The OpenAI-compatible client against a real local server: retries, failures, keys, identity."""

from __future__ import annotations

import math
import socket

import pytest
from openai_server import SERVED_MODEL, OpenAITestServer

from retriever_forge.llm import CachedLLM, LLMRequestError, OpenAICompatibleLLM, SamplingParams

SHORT = SamplingParams(max_new_tokens=4)


def _client(server, **kwargs) -> OpenAICompatibleLLM:
    kwargs = {"max_concurrency": 2, "timeout_s": 30, "backoff_s": 0.01, **kwargs}
    return OpenAICompatibleLLM(server.url, SERVED_MODEL, **kwargs)


@pytest.fixture
def server(openai_server):
    openai_server.clear_faults()
    yield openai_server
    openai_server.clear_faults()


@pytest.mark.faults
@pytest.mark.parametrize("kind", ["500", "429", "drop"])
def test_retries_recover_from_transient_failures(server, kind):
    llm = _client(server, max_concurrency=1)  # one request at a time: faults hit it in order
    expected = llm.generate(["Say hi."], SHORT)[0].text
    served_before = server.faults_served[kind]
    server.inject_faults(2, kind)
    (gen,) = llm.generate(["Say hi."], SHORT)
    assert gen.text == expected
    assert server.faults_served[kind] - served_before == 2
    assert llm.stats["retries"] == 2


@pytest.mark.faults
def test_retries_recover_from_a_timeout(smollm):
    # GET /v1/models answers at once, so the client's 0.3 s timeout only ever trips on the hang.
    with OpenAITestServer(smollm, model_name=SERVED_MODEL, hang_s=1.0) as server:
        llm = _client(server, max_concurrency=1, timeout_s=0.3)
        server.inject_faults(1, "timeout")
        assert len(llm.weights_hash) == 64
        assert llm.stats["retries"] == 1 and server.faults_served["timeout"] == 1


@pytest.mark.faults
def test_gives_up_after_max_retries_with_a_clear_error(server):
    llm = _client(server, max_retries=2, max_concurrency=1)
    server.inject_faults(10, "500")
    with pytest.raises(LLMRequestError) as info:
        llm.generate(["Say hi."], SHORT)
    message = str(info.value)
    assert f"{server.url}/v1/chat/completions" in message
    assert "3 attempts" in message and "HTTP 500" in message
    assert llm.stats["requests"] == 3


def test_non_retryable_errors_fail_at_once(server):
    llm = OpenAICompatibleLLM(server.url, "no-such-model", backoff_s=0.01)
    with pytest.raises(LLMRequestError, match="HTTP 404"):
        llm.generate(["Say hi."], SHORT)
    assert llm.stats["requests"] == 1
    with pytest.raises(LLMRequestError, match="does not serve 'no-such-model'"):
        _ = llm.weights_hash


def test_connection_refused_names_the_url():
    with socket.socket() as s:  # a port that nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = OpenAICompatibleLLM(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, backoff_s=0.01, timeout_s=2)
    with pytest.raises(LLMRequestError, match=rf"http://127.0.0.1:{port}/v1/chat/completions failed after 2 attempts"):
        llm.generate(["x"], SHORT)


def test_api_key_is_read_per_call_and_never_stored(smollm, monkeypatch, tmp_path):
    secret = "sk-test-3f9a1c77-not-a-real-key"
    env = "RF_TEST_LLM_KEY"
    monkeypatch.delenv(env, raising=False)
    with OpenAITestServer(smollm, model_name=SERVED_MODEL, require_api_key=secret) as server:
        llm = _client(server, api_key_env=env, max_retries=0)
        with pytest.raises(LLMRequestError, match="HTTP 401"):
            llm.generate(["Say hi."], SHORT)
        monkeypatch.setenv(env, secret)  # set after construction: read at call time
        cached = CachedLLM(llm, tmp_path / "cache.sqlite")
        cached.generate(["Say hi."], SHORT)
        cached.choice_logprobs(["Pick 1 or 2."], ["1", "2"])
        cached.close()
        assert secret not in repr(llm) and secret not in repr(cached)
        assert secret not in repr(vars(llm))
        for path in tmp_path.iterdir():
            assert secret.encode() not in path.read_bytes(), path


def test_weights_hash_ignores_base_url_and_volatile_fields(openai_server, smollm):
    first = OpenAICompatibleLLM(openai_server.url, SERVED_MODEL).weights_hash
    with OpenAITestServer(smollm, model_name=SERVED_MODEL) as other:
        assert other.url != openai_server.url
        assert OpenAICompatibleLLM(other.url + "/v1/", SERVED_MODEL).weights_hash == first
    with OpenAITestServer(smollm, model_name="another-name") as renamed:
        assert OpenAICompatibleLLM(renamed.url, "another-name").weights_hash != first


def test_choice_logprobs_match_the_served_model(openai_llm, smollm):
    prompts = ["Answer with 1 or 2. Which is larger, 1 or 2?", "Pick a number: 1 or 2."]
    remote = openai_llm.choice_logprobs(prompts, ["1", "2"])
    local = smollm.choice_logprobs(prompts, ["1", "2"])
    for r, loc in zip(remote, local, strict=True):
        assert r == pytest.approx(loc, abs=1e-3)


def test_completions_endpoint_sends_raw_prompts(openai_server, smollm):
    raw = OpenAICompatibleLLM(openai_server.url, SERVED_MODEL, chat=False)
    prompt = "The capital of France is"
    (gen,) = raw.generate([prompt], SamplingParams(max_new_tokens=6))
    assert gen.text == smollm.variant(chat_template=False).generate([prompt], SamplingParams(max_new_tokens=6))[0].text
    (row,) = raw.choice_logprobs([prompt], [" Paris", " London"])
    assert row[0] > row[1]  # even 135M parameters know this one
    assert raw.render_prompt(prompt) == prompt
    assert raw.render_prompt(prompt) != OpenAICompatibleLLM(openai_server.url, SERVED_MODEL).render_prompt(prompt)


def test_missing_choices_get_a_very_low_logprob():
    top = {"1": -0.1, " 2": -2.5, "Hello": -3.0}
    assert OpenAICompatibleLLM.match_choices(top, ["1", "2", "3"]) == [-0.1, -2.5, None]
    # several spellings of one choice add up; a token shared by two choices' prefixes is ignored
    merged = OpenAICompatibleLLM.match_choices({"yes": -1.0, " yes": -1.0, "y": -0.5}, ["yes", "yellow"])
    assert merged[0] == pytest.approx(-1.0 + math.log(2))
    assert merged[1] is None
