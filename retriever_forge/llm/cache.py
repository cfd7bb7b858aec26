"""A durable generation cache: an LLM call is paid for once, even across crashed runs.

:class:`CachedLLM` wraps any :class:`~retriever_forge.llm.base.LLMBackend`. Every request is
keyed by the sha256 of

* the backend's weights hash (a new model never reads an old model's answers) and, where the
  backend reports it, its ``numerics`` (the dtype it computes in),
* the *rendered* prompt (after the chat template, so a template change is a new key),
* for :meth:`~CachedLLM.generate`, the sampling parameters' ``cache_key()`` (seed included);
  for :meth:`~CachedLLM.choice_logprobs`, the list of choices.

Prompts reach the backend in fixed groups of ``batch_size`` (see :meth:`CachedLLM.groups`): only
groups holding a miss are sent, and each finished group is committed at once, so a run killed
mid-way loses at most the group in flight and a re-run generates only what is missing — with
the same batch neighbours as an uninterrupted run, so even backends whose outputs depend on
their neighbours (bfloat16, GPUs) resume to identical answers. Identical requests within one
call are generated once.

Storage is one SQLite file in WAL mode. One process may use it from several threads (calls are
serialised by a lock). Several processes may share the file — SQLite's locking keeps it
consistent, and a request both generate is stored twice under the same key, harmlessly — but
the intended use is one pipeline process per cache file. The API key of a remote backend is
never part of a key or a row.

Example:
    >>> from retriever_forge.llm import CachedLLM, SamplingParams, TransformersLLM
    >>> llm = CachedLLM(TransformersLLM.default(), ".forge/llm-cache.sqlite")   # doctest: +SKIP
    >>> _ = llm.generate(["Say hi."], SamplingParams(max_new_tokens=8))            # doctest: +SKIP
    >>> llm.generate(["Say hi."], SamplingParams(max_new_tokens=8))[0].cached     # doctest: +SKIP
    True
    >>> llm.stats["hits"], llm.stats["misses"]                                     # doctest: +SKIP
    (1, 1)
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from retriever_forge.hashing import hash_json
from retriever_forge.llm.base import Generation, LLMBackend, SamplingParams
from retriever_forge.progress import progress_bar

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,          -- sha256 of (kind, weights hash, rendered prompt, params|choices)
    kind TEXT NOT NULL,            -- 'generate' or 'choices'
    model_id TEXT NOT NULL,
    weights_hash TEXT NOT NULL,
    request TEXT NOT NULL,         -- sampling params JSON, or the choices JSON
    text TEXT,                     -- generate: the completion
    logprobs TEXT,                 -- choices: JSON list, normalised over the choices
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
)
"""
_LOOKUP_CHUNK = 500  # keys per SELECT ... IN (...), well under SQLite's variable limit


def _new_stats() -> dict:
    return {
        "hits": 0,  # requests answered from the cache
        "misses": 0,  # requests sent to the backend
        "backend_calls": 0,  # backend.generate / choice_logprobs calls (one per batch)
        "prompt_tokens": 0,  # prompt tokens the backend processed in this object's lifetime
        "completion_tokens": 0,  # tokens the backend generated
        "seconds": 0.0,  # wall time spent inside the backend
        "group_reruns": 0,  # cached prompts re-sent only to rebuild a partly cached batch (see CachedLLM.groups)
    }


class CachedLLM:
    """An :class:`LLMBackend` that answers from a SQLite cache and sends only misses to ``backend``.

    Args:
        backend: the model to call on misses.
        cache_path: SQLite file (created with its parent folders).
        batch_size: misses per backend call; each batch is committed when it returns.
        progress: called with a one-line status after each batch (e.g. ``context.log.info``).

    ``stats`` counts hits, misses, backend calls, tokens and backend seconds since creation —
    ready for asset metadata (``completion_tokens / seconds`` is the generation throughput).
    """

    def __init__(
        self,
        backend: LLMBackend,
        cache_path: str | os.PathLike,
        batch_size: int = 32,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.backend = backend
        self.cache_path = Path(cache_path)
        self.batch_size = batch_size
        self.progress = progress
        self.stats = _new_stats()
        self._lock = threading.RLock()
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.cache_path, timeout=60, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against a killed process (the WAL is on disk); only an OS crash can
        # lose the last commits, which then are simply regenerated.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        with self._conn:
            self._conn.execute(_SCHEMA)

    # ------------------------------------------------------------------ LLMBackend

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    @property
    def weights_hash(self) -> str:
        return self.backend.weights_hash

    def __repr__(self) -> str:
        return f"CachedLLM({self.backend!r}, cache_path={str(self.cache_path)!r})"

    @property
    def numerics(self) -> str | None:
        return getattr(self.backend, "numerics", None)

    def render_prompt(self, prompt: str) -> str:
        render = getattr(self.backend, "render_prompt", None)
        return render(prompt) if render is not None else prompt

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        """Like the backend's ``generate``; hits come back with ``cached=True``."""
        request = params.cache_key()
        with self._lock:
            keys, lengths = self._keys("generate", prompts, request)
            stored = self._lookup(keys)
            fresh: dict[str, Generation] = {}

            def run(batch_prompts: list[str]) -> list[Generation]:
                return self.backend.generate(batch_prompts, params)

            def row(gen: Generation) -> tuple:
                return gen.text, None, gen.prompt_tokens, gen.completion_tokens

            self._fill(keys, lengths, prompts, stored, fresh, "generate", request, run, row)
            out = []
            for key in keys:
                if key in stored:
                    text, _, prompt_tokens, completion_tokens = stored[key]
                    out.append(Generation(text, prompt_tokens, completion_tokens, cached=True))
                else:
                    out.append(fresh[key])
            return out

    def choice_logprobs(self, prompts: list[str], choices: list[str]) -> list[list[float]]:
        """Like the backend's ``choice_logprobs``, answered from the cache where possible."""
        request = json.dumps(list(choices), separators=(",", ":"))
        with self._lock:
            keys, lengths = self._keys("choices", prompts, request)
            stored = self._lookup(keys)
            fresh: dict[str, list[float]] = {}

            def run(batch_prompts: list[str]) -> list[list[float]]:
                return self.backend.choice_logprobs(batch_prompts, list(choices))

            def row(logprobs: list[float]) -> tuple:
                return None, json.dumps(logprobs), 0, 0

            self._fill(keys, lengths, prompts, stored, fresh, "choices", request, run, row)
            return [json.loads(stored[k][1]) if k in stored else list(fresh[k]) for k in keys]

    # ------------------------------------------------------------------ internals

    def _keys(self, kind: str, prompts: Sequence[str], request: str) -> tuple[list[str], dict[str, int]]:
        """Each prompt's key, and each key's rendered prompt length (for :meth:`groups`)."""
        model = [self.backend.weights_hash]
        if self.numerics:
            model.append(self.numerics)
        keys, lengths = [], {}
        for p in prompts:
            rendered = self.render_prompt(p)
            key = hash_json([kind, *model, rendered, request])
            lengths[key] = len(rendered)
            keys.append(key)
        return keys, lengths

    def _lookup(self, keys: list[str]) -> dict[str, tuple]:
        found: dict[str, tuple] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            for key, *rest in self._conn.execute(
                f"SELECT key, text, logprobs, prompt_tokens, completion_tokens FROM generations WHERE key IN ({marks})",
                chunk,
            ):
                found[key] = tuple(rest)
        return found

    def groups(self, lengths: dict[str, int]) -> list[list[str]]:
        """The call's unique keys cut into the fixed groups that are sent to the backend together.

        The groups depend on the call's whole prompt set, never on what is already cached:
        unique keys in a canonical order (rendered prompt length, then key: similar lengths
        share a batch, so little compute goes to padding), cut every ``batch_size``. bfloat16
        kernels and GPUs give a prompt slightly different logits next to different neighbours,
        so a resumed run must rebuild exactly the batches an uninterrupted run would have sent.
        """
        unique = sorted(lengths, key=lambda k: (lengths[k], k))
        return [unique[s : s + self.batch_size] for s in range(0, len(unique), self.batch_size)]

    def _fill(self, keys, lengths, prompts, stored, fresh, kind, request, run, row) -> None:
        """Run each group (see :meth:`groups`) that holds a missing key, committing each group.

        A group with any miss runs whole; the answers it recomputes for keys already stored are
        discarded (the stored answer stands), so a killed run loses at most the group in flight
        and its rerun reproduces the uninterrupted run's answers.
        """
        first_index: dict[str, int] = {}
        for i, key in enumerate(keys):
            first_index.setdefault(key, i)
        todo = [g for g in self.groups(lengths) if any(k not in stored for k in g)]
        missing = sum(1 for k in first_index if k not in stored)
        self.stats["hits"] += sum(1 for k in keys if k in stored)
        self.stats["misses"] += missing
        done = 0
        with progress_bar(sum(map(len, todo)), "generate" if kind == "generate" else "judge", unit="prompt") as bar:
            for group in todo:
                t0 = time.perf_counter()
                results = run([prompts[first_index[k]] for k in group])
                elapsed = time.perf_counter() - t0
                if len(results) != len(group):
                    raise RuntimeError(f"backend returned {len(results)} results for {len(group)} prompts")
                self.stats["backend_calls"] += 1
                self.stats["seconds"] += elapsed
                now = time.time()
                rows = []
                for key, result in zip(group, results, strict=True):
                    text, logprobs, prompt_tokens, completion_tokens = row(result)
                    self.stats["prompt_tokens"] += prompt_tokens
                    self.stats["completion_tokens"] += completion_tokens
                    if key in stored:
                        self.stats["group_reruns"] += 1  # computed only to keep the group's batch intact
                        continue
                    rows.append(
                        (key, kind, self.backend.model_id, self.backend.weights_hash, request,
                         text, logprobs, prompt_tokens, completion_tokens, now)
                    )  # fmt: skip
                    fresh[key] = result
                with self._conn:  # one transaction per group: committed before the next group starts
                    self._conn.executemany(
                        "INSERT OR REPLACE INTO generations (key, kind, model_id, weights_hash, request, text, "
                        "logprobs, prompt_tokens, completion_tokens, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                        rows,
                    )
                done += len(rows)
                bar.update(len(group))
                if self.progress is not None:
                    self.progress(
                        f"{self.model_id}: {done}/{missing} {kind} requests generated "
                        f"({len(first_index) - missing} from cache, {elapsed:.1f}s for the last batch)"
                    )

    def __len__(self) -> int:
        """Number of stored entries."""
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> CachedLLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
