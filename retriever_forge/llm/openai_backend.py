"""Generation through an OpenAI-compatible HTTP server (vLLM, llama.cpp, TGI, OpenAI...).

:class:`OpenAICompatibleLLM` sends one request per prompt, at most ``max_concurrency`` at a
time (the server batches them), and retries connection errors, timeouts, HTTP 429 and 5xx with
exponential backoff and jitter. After ``max_retries`` retries it raises
:class:`LLMRequestError` naming the URL, the attempts and the last status.

The API key is read from the environment variable named by ``api_key_env`` at each request; it
is never stored on the object, so it cannot leak through ``repr``, provenance metadata, logs or
the generation cache. A server that needs no key is called without an ``Authorization`` header.

Remote weights cannot be hashed byte-wise: :attr:`OpenAICompatibleLLM.weights_hash` hashes the
served model id together with the stable fields ``/v1/models`` reports for it (``root``,
``parent``, ``owned_by``, ``max_model_len``). Pin what is served behind that id (a vLLM server
started from a fixed local folder reports that folder as ``root``) for that identity to hold.

Example:
    >>> from retriever_forge.llm import OpenAICompatibleLLM, SamplingParams
    >>> llm = OpenAICompatibleLLM("http://127.0.0.1:8000", "Qwen/Qwen2.5-7B-Instruct")  # doctest: +SKIP
    >>> llm.generate(["Write one search query about BM25."], SamplingParams(max_new_tokens=24))  # doctest: +SKIP
    [Generation(text='what is bm25 ranking', prompt_tokens=31, completion_tokens=6, cached=False)]
    >>> llm.choice_logprobs(["Is water wet? Answer 0 (no) or 1 (yes)."], ["0", "1"])  # doctest: +SKIP
    [[-3.2, -0.04]]
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from retriever_forge.hashing import hash_json
from retriever_forge.llm.base import Generation, SamplingParams
from retriever_forge.llm.decoding import MISSING_LOGPROB, derive_seed, logsumexp, normalise_logprobs, truncate_at_stop

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
_STABLE_MODEL_FIELDS = ("id", "object", "owned_by", "root", "parent", "max_model_len")
TOP_LOGPROBS = 20  # the most the OpenAI API (and vLLM by default) returns per position


MAX_RETRY_AFTER_S = 30.0


def _retry_after_s(response: requests.Response) -> float:
    """Seconds a 429/503 asks to wait (``Retry-After`` in seconds), capped; 0 when absent."""
    try:
        return min(max(float(response.headers.get("Retry-After", 0)), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:  # an HTTP date: rare for inference servers; the backoff covers it
        return 0.0


class LLMRequestError(RuntimeError):
    """A request to the LLM server failed for good (non-retryable, or retries exhausted)."""


class OpenAICompatibleLLM:
    """Client for ``/v1/chat/completions`` (or ``/v1/completions``); implements :class:`LLMBackend`.

    Args:
        base_url: server root, with or without the trailing ``/v1``.
        model: the served model name sent as ``model``.
        api_key_env: environment variable holding the API key (read per request, never stored).
        max_concurrency: requests in flight at once.
        timeout_s: per-request timeout.
        max_retries: retries after the first attempt (so ``max_retries + 1`` attempts in all).
        backoff_s: first retry delay; doubles each retry, times a random factor in [0.5, 1.5).
        chat: ``True`` sends prompts as a user message to the chat endpoint (the server applies
            the chat template); ``False`` sends them verbatim to ``/v1/completions``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout_s: float = 60,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        chat: bool = True,
    ) -> None:
        base = base_url.rstrip("/")
        self.base_url = base[: -len("/v1")] if base.endswith("/v1") else base
        self.model_id = model
        self.api_key_env = api_key_env
        self.max_concurrency = max(1, int(max_concurrency))
        self.timeout_s = timeout_s
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = backoff_s
        self.chat = chat
        self.stats = {"requests": 0, "retries": 0, "choices_missing": 0}
        self._stats_lock = threading.Lock()
        self._local = threading.local()  # one requests.Session per worker thread
        self._weights_hash: str | None = None

    def __repr__(self) -> str:
        return (
            f"OpenAICompatibleLLM(base_url={self.base_url!r}, model={self.model_id!r}, api_key_env={self.api_key_env!r}, chat={self.chat})"
        )

    # ------------------------------------------------------------------ HTTP

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[name] += n

    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        """One JSON call with retries; raises :class:`LLMRequestError` when it cannot succeed."""
        url = f"{self.base_url}{path}"
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count("retries")
                delay = self.backoff_s * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
                time.sleep(delay)
            self._count("requests")
            try:
                response = self._session().request(method, url, json=payload, headers=self._headers(), timeout=self.timeout_s)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = f"{type(exc).__name__}: {exc}"
                log.warning("%s %s attempt %d failed: %s", method, url, attempt + 1, last)
                continue
            if response.status_code == 200:
                try:
                    return response.json()
                except ValueError as exc:
                    raise LLMRequestError(f"{method} {url} returned invalid JSON: {response.text[:200]!r}") from exc
            last = f"HTTP {response.status_code}: {response.text[:300]}"
            if response.status_code not in RETRYABLE_STATUS:
                raise LLMRequestError(f"{method} {url} failed with {last}")
            log.warning("%s %s attempt %d failed: HTTP %d", method, url, attempt + 1, response.status_code)
            retry_after = _retry_after_s(response)
            if retry_after and attempt < self.max_retries:
                time.sleep(retry_after)  # the server said when; the backoff below still applies
        raise LLMRequestError(f"{method} {url} failed after {self.max_retries + 1} attempts; last error: {last}")

    def _map(self, fn, items: list) -> list:
        """``fn`` over ``items`` on the thread pool, in input order."""
        if len(items) <= 1 or self.max_concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    # ------------------------------------------------------------------ identity

    def render_prompt(self, prompt: str) -> str:
        """What is sent for ``prompt``: the chat message list, or the raw completion prompt.

        The server applies its own chat template, so the request body is the most exact
        rendering the client can know; chat and completion requests never share a cache entry.
        """
        if self.chat:
            return json.dumps([{"role": "user", "content": prompt}], separators=(",", ":"))
        return prompt

    @property
    def weights_hash(self) -> str:
        """Hash of the served model id and its stable ``/v1/models`` fields (not of bytes)."""
        if self._weights_hash is None:
            listing = self._request("GET", "/v1/models")
            entries = [m for m in listing.get("data", []) if m.get("id") == self.model_id]
            if not entries:
                served = [m.get("id") for m in listing.get("data", [])]
                raise LLMRequestError(f"{self.base_url}/v1/models does not serve {self.model_id!r}; it serves {served}")
            stable = {k: entries[0].get(k) for k in _STABLE_MODEL_FIELDS}
            self._weights_hash = hash_json({"served_model": stable})
        return self._weights_hash

    # ------------------------------------------------------------------ generate

    def _sampling_body(self, prompt: str, params: SamplingParams) -> dict:
        body = {
            "model": self.model_id,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            # Per-prompt seeds, as the in-process backends use, so prompts sent with one run seed
            # do not share one random stream; 31 bits fit every server's seed field.
            "seed": derive_seed(params.seed, prompt) % (1 << 31),
            "n": 1,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    def _generate_one(self, prompt: str, params: SamplingParams) -> Generation:
        body = self._sampling_body(prompt, params)
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
            reply = self._request("POST", "/v1/chat/completions", body)
            text = reply["choices"][0]["message"].get("content") or ""
        else:
            body["prompt"] = prompt
            reply = self._request("POST", "/v1/completions", body)
            text = reply["choices"][0].get("text") or ""
        # Servers differ in honouring ``stop``; cutting again here is idempotent.
        text, _ = truncate_at_stop(text, params.stop)
        usage = reply.get("usage") or {}
        return Generation(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        """Complete every prompt (``max_concurrency`` requests in flight); order matches input."""
        return self._map(lambda p: self._generate_one(p, params), list(prompts))

    # ------------------------------------------------------------------ choices

    def _top_logprobs(self, prompt: str) -> dict[str, float]:
        """token text -> logprob for the first generated position's top tokens."""
        body = {"model": self.model_id, "temperature": 0.0, "max_tokens": 1, "n": 1}
        if self.chat:
            body.update(messages=[{"role": "user", "content": prompt}], logprobs=True, top_logprobs=TOP_LOGPROBS)
            reply = self._request("POST", "/v1/chat/completions", body)
            content = ((reply["choices"][0].get("logprobs") or {}).get("content")) or []
            if not content:
                return {}
            first = content[0]
            tops = {t["token"]: float(t["logprob"]) for t in first.get("top_logprobs") or []}
            tops.setdefault(first["token"], float(first["logprob"]))
            return tops
        body.update(prompt=prompt, logprobs=TOP_LOGPROBS)
        reply = self._request("POST", "/v1/completions", body)
        logprobs = reply["choices"][0].get("logprobs") or {}
        top = (logprobs.get("top_logprobs") or [{}])[0] or {}
        return {tok: float(lp) for tok, lp in top.items()}

    @staticmethod
    def match_choices(top: dict[str, float], choices: list[str]) -> list[float | None]:
        """Each choice's log-probability among the server's top tokens (``None`` when absent).

        A token counts for a choice when, stripped of whitespace, it equals the choice, or is a
        prefix of that one choice only (the server's tokenizer may split a multi-token choice).
        Several tokens for one choice (``"1"`` and ``" 1"``) add up in probability space.
        """
        stripped = [c.strip() for c in choices]
        found: list[list[float]] = [[] for _ in choices]
        for token, logprob in top.items():
            t = token.strip()
            if not t:
                continue
            exact = [i for i, c in enumerate(stripped) if c == t]
            owners = exact or [i for i, c in enumerate(stripped) if c.startswith(t)]
            if len(owners) == 1:
                found[owners[0]].append(logprob)
        return [logsumexp(f) if f else None for f in found]

    def _choice_row(self, prompt: str, choices: list[str]) -> list[float]:
        matched = self.match_choices(self._top_logprobs(prompt), choices)
        missing = sum(m is None for m in matched)
        if missing:
            self._count("choices_missing", missing)
        return normalise_logprobs([MISSING_LOGPROB if m is None else m for m in matched])

    def choice_logprobs(self, prompts: list[str], choices: list[str]) -> list[list[float]]:
        """One 1-token request per prompt with ``top_logprobs``; normalised over ``choices``.

        A choice absent from the server's top tokens gets :data:`MISSING_LOGPROB` before
        normalising (counted in ``stats["choices_missing"]``).
        """
        if not choices:
            raise ValueError("choice_logprobs needs at least one choice")
        return self._map(lambda p: self._choice_row(p, list(choices)), list(prompts))
