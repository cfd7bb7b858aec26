"""A small, real OpenAI-compatible HTTP server for tests, backed by a :class:`TransformersLLM`.

It listens on 127.0.0.1 (a free port by default) in a background thread and serves

* ``GET /v1/models``
* ``POST /v1/chat/completions`` — one user message; ``logprobs``/``top_logprobs`` for the first
  generated position;
* ``POST /v1/completions`` — a raw prompt (no chat template); ``logprobs: k`` for the first
  position.

Like a real inference server, it batches: requests that arrive together (within
``batch_window_s``) and share sampling settings go through one batched backend call, so the
client's concurrency pays off here as it would against vLLM.

Fault injection exercises the client's retries: :meth:`OpenAITestServer.inject_faults` makes
the next ``n`` requests fail with HTTP 500 or 429, hang past the client's timeout, or drop the
connection. ``require_api_key`` makes every request without the right bearer token a 401.

Example:
    >>> with OpenAITestServer(TransformersLLM.default(), model_name="smollm2") as server:  # doctest: +SKIP
    ...     OpenAICompatibleLLM(server.url, "smollm2").generate(["Say hi."], SamplingParams())
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from retriever_forge.llm.base import Generation, SamplingParams
from retriever_forge.llm.transformers_backend import TransformersLLM

FAULT_KINDS = ("500", "429", "timeout", "drop")
SERVED_MODEL = "smollm2-test"


def next_token_logprobs(backend: TransformersLLM, prompts: list[str], top_k: int = 20) -> list[list[tuple[int, str, float]]]:
    """The ``top_k`` most likely next tokens after each prompt under ``backend``: (token id, text, logprob).

    Log-probabilities are over the whole vocabulary (what an OpenAI-style ``top_logprobs``
    reports), unlike :meth:`TransformersLLM.choice_logprobs`, which normalises over the choices.
    """
    if not prompts:
        return []
    import torch

    with backend._lock:
        model = backend.load()
        encoded = backend._encode(prompts)
        results: list[list[tuple[int, str, float]] | None] = [None] * len(prompts)
        with torch.inference_mode():
            for batch in backend._batches(encoded):
                input_ids, attention, positions = backend._left_pad([encoded[i] for i in batch])
                logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, logits_to_keep=1).logits[:, -1, :]
                top = torch.log_softmax(logits.float(), dim=-1).topk(top_k, dim=-1)
                for i, ids, lps in zip(batch, top.indices.tolist(), top.values.tolist(), strict=True):
                    results[i] = [(t, backend.tokenizer.decode([t]), lp) for t, lp in zip(ids, lps, strict=True)]
        return results  # type: ignore[return-value]


class OpenAITestServer:
    """OpenAI-compatible server over a loaded :class:`TransformersLLM`; use as a context manager."""

    def __init__(
        self,
        backend: TransformersLLM,
        model_name: str = SERVED_MODEL,
        host: str = "127.0.0.1",
        port: int = 0,
        require_api_key: str | None = None,
        hang_s: float = 2.0,
        batch_window_s: float = 0.02,
        max_batch: int = 16,
    ) -> None:
        self.chat_backend = backend.variant(chat_template=True)
        self.raw_backend = backend.variant(chat_template=False)
        self.model_name = model_name
        self.require_api_key = require_api_key
        self.hang_s = hang_s
        self.requests = Counter()  # path -> requests received (faulty ones included)
        self.faults_served = Counter()  # fault kind -> times served
        self._faults: list[str] = []
        self._lock = threading.Lock()
        self.batch_window_s = batch_window_s
        self.max_batch = max_batch
        self.batches: list[int] = []  # size of each batched backend call
        self._jobs: queue.Queue = queue.Queue()
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._batcher: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OpenAITestServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="openai-test-server", daemon=True)
        self._batcher = threading.Thread(target=self._batch_loop, name="openai-test-batcher", daemon=True)
        self._thread.start()
        self._batcher.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._jobs.put(None)
        for thread in (self._thread, self._batcher):
            if thread is not None:
                thread.join(timeout=5)

    def __enter__(self) -> OpenAITestServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def inject_faults(self, n: int, kind: str = "500") -> None:
        """Make the next ``n`` requests fail with ``kind`` (one of :data:`FAULT_KINDS`)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}")
        with self._lock:
            self._faults.extend([kind] * n)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _next_fault(self) -> str | None:
        with self._lock:
            if self._faults:
                kind = self._faults.pop(0)
                self.faults_served[kind] += 1
                return kind
        return None

    # ------------------------------------------------------------------ batching

    def _submit(self, op: str, prompt: str, arg) -> object:
        """Queue one prompt for the batcher and wait for its result."""
        future: Future = Future()
        self._jobs.put((op, prompt, arg, future))
        return future.result()

    def _batch_loop(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            jobs = [first]
            deadline = time.monotonic() + self.batch_window_s
            while len(jobs) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                try:
                    job = self._jobs.get(timeout=left)
                except queue.Empty:
                    break
                if job is None:
                    self._jobs.put(None)  # let the outer loop see the stop signal
                    break
                jobs.append(job)
            groups: dict[tuple, list] = {}
            for job in jobs:
                groups.setdefault((job[0], repr(job[2])), []).append(job)
            for (op, _), group in groups.items():
                self._run_group(op, group)

    def _run_group(self, op: str, group: list) -> None:
        prompts, arg = [job[1] for job in group], group[0][2]
        try:
            if op in ("chat", "raw"):
                backend = self.chat_backend if op == "chat" else self.raw_backend
                results = backend.generate(prompts, arg)
            else:
                backend = self.chat_backend if op == "top_chat" else self.raw_backend
                # a fake served model (tests/faults) answers itself; a TransformersLLM goes through the function above
                fake = getattr(backend, "next_token_logprobs", None)
                results = fake(prompts, top_k=arg) if fake else next_token_logprobs(backend, prompts, top_k=arg)
            self.batches.append(len(prompts))
        except Exception as exc:  # noqa: BLE001 - handed to the waiting request threads
            for job in group:
                job[3].set_exception(exc)
            return
        for job, result in zip(group, results, strict=True):
            job[3].set_result(result)

    # ------------------------------------------------------------------ request handling

    def _models(self) -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.model_name,
                    "object": "model",
                    "created": int(time.time()),  # volatile on purpose: must not enter weights_hash
                    "owned_by": "retriever-forge-tests",
                    "root": self.chat_backend.model_id,
                    "parent": None,
                    "max_model_len": 2048,
                }
            ],
        }

    @staticmethod
    def _params(body: dict) -> SamplingParams:
        stop = body.get("stop") or ()
        return SamplingParams(
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            max_new_tokens=int(body.get("max_tokens") or 16),
            seed=int(body.get("seed") or 0),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
        )

    def _chat(self, body: dict) -> dict:
        messages = body.get("messages") or []
        if len(messages) != 1 or messages[0].get("role") != "user":
            raise ValueError("this test server takes exactly one user message")
        prompt = messages[0]["content"]
        params = self._params(body)
        top = None
        if body.get("logprobs"):
            k = int(body.get("top_logprobs") or 1)
            top = self._submit("top_chat", prompt, max(k, 1))
        gen = self._first_token_only(self.chat_backend, prompt, params, top) or self._submit("chat", prompt, params)
        choice: dict = {"index": 0, "message": {"role": "assistant", "content": gen.text}, "finish_reason": "stop"}
        if top is not None:
            first = top[0]
            choice["logprobs"] = {
                "content": [
                    {
                        "token": first[1],
                        "logprob": first[2],
                        "top_logprobs": [{"token": text, "logprob": lp} for _, text, lp in top[:k]],
                    }
                ]
            }
        return self._envelope("chat.completion", choice, gen)

    def _completion(self, body: dict) -> dict:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError("this test server takes one string prompt")
        params = self._params(body)
        top = self._submit("top_raw", prompt, int(body["logprobs"])) if body.get("logprobs") else None
        gen = self._first_token_only(self.raw_backend, prompt, params, top) or self._submit("raw", prompt, params)
        choice: dict = {"index": 0, "text": gen.text, "finish_reason": "stop", "logprobs": None}
        if top is not None:
            choice["logprobs"] = {
                "tokens": [top[0][1]],
                "token_logprobs": [top[0][2]],
                "top_logprobs": [{text: lp for _, text, lp in top}],
            }
        return self._envelope("text_completion", choice, gen)

    @staticmethod
    def _first_token_only(backend, prompt: str, params: SamplingParams, top) -> Generation | None:
        """A greedy one-token reply is the top token itself: no second pass through the model."""
        if top is None or params.max_new_tokens != 1 or params.temperature > 0:
            return None
        return Generation(
            text=top[0][1], prompt_tokens=len(backend.tokenizer(backend.render_prompt(prompt))["input_ids"]), completion_tokens=1
        )

    def _envelope(self, obj: str, choice: dict, gen) -> dict:
        return {
            "id": f"test-{time.time_ns()}",
            "object": obj,
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": gen.prompt_tokens,
                "completion_tokens": gen.completion_tokens,
                "total_tokens": gen.prompt_tokens + gen.completion_tokens,
            },
        }

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                server.requests[self.path] += 1
                fault = server._next_fault()
                if fault == "500":
                    return self._send(500, {"error": {"message": "injected server error"}})
                if fault == "429":
                    return self._send(429, {"error": {"message": "injected rate limit"}})
                if fault == "timeout":
                    time.sleep(server.hang_s)
                    self.close_connection = True
                    return None
                if fault == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return None
                expected_auth = f"Bearer {server.require_api_key}"
                if server.require_api_key is not None and self.headers.get("Authorization") != expected_auth:
                    return self._send(401, {"error": {"message": "missing or wrong API key"}})
                try:
                    if method == "GET" and self.path == "/v1/models":
                        return self._send(200, server._models())
                    body = json.loads(raw or b"{}")
                    if method == "POST" and self.path in ("/v1/chat/completions", "/v1/completions"):
                        if body.get("model") != server.model_name:
                            return self._send(404, {"error": {"message": f"model {body.get('model')!r} not served"}})
                        handler = server._chat if self.path == "/v1/chat/completions" else server._completion
                        return self._send(200, handler(body))
                    return self._send(404, {"error": {"message": f"no route {method} {self.path}"}})
                except ValueError as exc:
                    return self._send(400, {"error": {"message": str(exc)}})

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

        return Handler
