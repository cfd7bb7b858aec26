"""The durable generation cache, around the real SmolLM2 backend.

Backend calls are counted by a thin pass-through wrapper; the model itself is real.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from retriever_forge.llm import CachedLLM, Generation, SamplingParams

PARAMS = SamplingParams(temperature=0.0, max_new_tokens=6)
PASSAGES = [
    "Quicksort partitions an array around a pivot.",
    "A hash table maps keys to buckets.",
    "Dijkstra's algorithm finds shortest paths.",
    "A parser turns tokens into a syntax tree.",
    "TCP provides reliable ordered delivery.",
    "A B-tree index keeps keys sorted.",
    "BM25 ranks documents by term frequency.",
]
PROMPTS = [f"Write a search query for: {p}" for p in PASSAGES]
REPO = Path(__file__).resolve().parents[2]


class CountingBackend:
    """Passes calls through to a real backend, recording them; can fail on the n-th call."""

    def __init__(self, inner, fail_on_call: int | None = None, weights_hash: str | None = None):
        self.inner = inner
        self.model_id = inner.model_id
        self._weights_hash = weights_hash
        self.fail_on_call = fail_on_call
        self.calls: list[list[str]] = []

    @property
    def weights_hash(self) -> str:
        return self._weights_hash or self.inner.weights_hash

    @property
    def numerics(self) -> str | None:
        return getattr(self.inner, "numerics", None)

    def render_prompt(self, prompt: str) -> str:
        return self.inner.render_prompt(prompt)

    def _record(self, prompts):
        self.calls.append(list(prompts))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("simulated crash in the middle of a run")

    def generate(self, prompts, params):
        self._record(prompts)
        return self.inner.generate(prompts, params)

    def choice_logprobs(self, prompts, choices):
        self._record(prompts)
        return self.inner.choice_logprobs(prompts, choices)

    @property
    def generated(self) -> int:
        return sum(len(c) for c in self.calls)


@pytest.fixture(scope="module")
def reference(smollm):
    """Uncached greedy outputs for PROMPTS, computed once."""
    return [g.text for g in smollm.generate(PROMPTS, PARAMS)]


def test_second_call_is_served_from_cache(smollm, reference, tmp_path):
    counting = CountingBackend(smollm)
    progress: list[str] = []
    with CachedLLM(counting, tmp_path / "c.sqlite", batch_size=4, progress=progress.append) as llm:
        first = llm.generate(PROMPTS, PARAMS)
        assert [g.text for g in first] == reference
        assert not any(g.cached for g in first)
        assert len(counting.calls) == 2 and len(progress) == 2
        second = llm.generate(PROMPTS, PARAMS)
        assert len(counting.calls) == 2, "a fully cached call must not reach the backend"
        assert [g.text for g in second] == reference
        assert all(g.cached for g in second)
        assert [g.completion_tokens for g in second] == [g.completion_tokens for g in first]
        assert llm.stats["hits"] == len(PROMPTS) and llm.stats["misses"] == len(PROMPTS)
        assert llm.stats["completion_tokens"] > 0 and llm.stats["seconds"] > 0
    # a new process (here: a new object) reads the same file
    with CachedLLM(CountingBackend(smollm), tmp_path / "c.sqlite") as reopened:
        assert [g.text for g in reopened.generate(PROMPTS, PARAMS)] == reference
        assert reopened.backend.calls == []


def test_crash_then_rerun_generates_only_the_unfinished(smollm, reference, tmp_path):
    path = tmp_path / "c.sqlite"
    crashing = CountingBackend(smollm, fail_on_call=3)
    with CachedLLM(crashing, path, batch_size=2) as llm, pytest.raises(RuntimeError, match="simulated crash"):
        llm.generate(PROMPTS, PARAMS)
    assert len(crashing.calls) == 3
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM generations").fetchone()[0] == 4  # two committed batches
    resumed = CountingBackend(smollm)
    with CachedLLM(resumed, path, batch_size=2) as llm:
        out = llm.generate(PROMPTS, PARAMS)
    assert resumed.generated == len(PROMPTS) - 4
    assert [g.text for g in out] == reference
    assert sum(g.cached for g in out) == 4


def test_key_covers_seed_params_model_and_choices(smollm, tmp_path):
    counting = CountingBackend(smollm)
    with CachedLLM(counting, tmp_path / "c.sqlite") as llm:
        hot = SamplingParams(temperature=0.9, max_new_tokens=4, seed=1)
        llm.generate(PROMPTS[:2], hot)
        llm.generate(PROMPTS[:2], hot)
        assert counting.generated == 2
        llm.generate(PROMPTS[:2], SamplingParams(temperature=0.9, max_new_tokens=4, seed=2))
        assert counting.generated == 4
        rows = llm.choice_logprobs(PROMPTS[:2], ["1", "2"])
        assert llm.choice_logprobs(PROMPTS[:2], ["1", "2"]) == rows
        assert counting.generated == 6
        llm.choice_logprobs(PROMPTS[:2], ["1", "2", "3"])
        assert counting.generated == 8
    other_model = CountingBackend(smollm, weights_hash="f" * 64)
    with CachedLLM(other_model, tmp_path / "c.sqlite") as llm:
        llm.generate(PROMPTS[:2], hot)
        assert other_model.generated == 2, "another model's weights must not read these answers"


def test_duplicates_within_a_call_are_generated_once(smollm, tmp_path):
    counting = CountingBackend(smollm)
    with CachedLLM(counting, tmp_path / "c.sqlite") as llm:
        out = llm.generate([PROMPTS[0], PROMPTS[1], PROMPTS[0]], PARAMS)
    assert counting.generated == 2
    assert out[0].text == out[2].text


def test_sqlite_is_in_wal_mode(smollm, tmp_path):
    with CachedLLM(smollm, tmp_path / "c.sqlite"):
        pass
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.faults
def test_sigkill_mid_run_keeps_committed_batches(smollm, reference, tmp_path):
    """A real process, killed with SIGKILL after two committed batches, loses only its batch in flight."""
    path = tmp_path / "c.sqlite"
    script = textwrap.dedent(
        f"""
        import json, sys, time
        import torch
        torch.set_num_threads(1)
        from retriever_forge.llm import CachedLLM, SamplingParams, TransformersLLM

        class SlowAfterTwo:
            # Real model; after two batches each batch sleeps, so the parent can kill it mid-batch.
            def __init__(self, inner):
                self.inner, self.model_id, self.n = inner, inner.model_id, 0
                self.weights_hash, self.numerics = inner.weights_hash, inner.numerics
            def render_prompt(self, p):
                return self.inner.render_prompt(p)
            def generate(self, prompts, params):
                self.n += 1
                if self.n > 2:
                    time.sleep(60)
                return self.inner.generate(prompts, params)

        llm = CachedLLM(SlowAfterTwo(TransformersLLM.default(dtype="float32")), sys.argv[1], batch_size=2,
                        progress=lambda m: print("BATCH", m, flush=True))
        llm.generate({json.dumps(PROMPTS)}, SamplingParams(**{json.dumps(PARAMS.as_dict())}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        seen = 0
        deadline = time.monotonic() + 120
        while seen < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line.startswith("BATCH")
        assert seen == 2, "the child should report two committed batches"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    resumed = CountingBackend(smollm)
    with CachedLLM(resumed, path, batch_size=2) as llm:
        out = llm.generate(PROMPTS, PARAMS)
    assert resumed.generated == len(PROMPTS) - 4
    assert [g.text for g in out] == reference
    assert sum(g.cached for g in out) == 4


class NeighbourSensitive:
    """A backend whose answer to a prompt depends on the rest of its batch, as bf16 and GPU
    kernels' rounding does: the worst case for reproducing a run after a crash."""

    model_id = "neighbour-sensitive"
    weights_hash = "e" * 64
    numerics = "bfloat16"

    def __init__(self, fail_on_call: int | None = None):
        self.fail_on_call, self.calls = fail_on_call, []

    def generate(self, prompts, params):
        self.calls.append(list(prompts))
        if len(self.calls) == self.fail_on_call:
            raise RuntimeError("simulated crash in the middle of a run")
        batch = "+".join(sorted(p[-3:] for p in prompts))
        return [Generation(f"{p[-3:]} next to {batch}", 1, 1) for p in prompts]


def test_resumed_run_rebuilds_the_same_batches_as_an_uninterrupted_one(tmp_path):
    prompts = [f"prompt {i:03d}" for i in range(11)] + ["a much longer prompt 011", "prompt 000"]
    with CachedLLM(NeighbourSensitive(), tmp_path / "whole.sqlite", batch_size=4) as llm:
        whole = [g.text for g in llm.generate(prompts, PARAMS)]
    crashing = NeighbourSensitive(fail_on_call=2)
    with CachedLLM(crashing, tmp_path / "c.sqlite", batch_size=4) as llm, pytest.raises(RuntimeError, match="simulated crash"):
        llm.generate(prompts, PARAMS)
    # The rerun sees some of its prompts cached; it must not regroup the rest around them.
    resumed = NeighbourSensitive()
    with CachedLLM(resumed, tmp_path / "c.sqlite", batch_size=4) as llm:
        again = [g.text for g in llm.generate(prompts, PARAMS)]
        assert llm.stats["hits"] == 4 and llm.stats["misses"] == 8 and llm.stats["group_reruns"] == 0
    assert again == whole
    assert [len(c) for c in resumed.calls] == [4, 4], "the two unfinished groups, whole"
    # A later call over a superset regroups, but never overwrites or re-asks a stored answer.
    with CachedLLM(resumed, tmp_path / "c.sqlite", batch_size=4) as llm:
        more = [g.text for g in llm.generate(["prompt 999", *prompts], PARAMS)]
        assert more[1:] == whole and llm.stats["misses"] == 1
        assert llm.stats["group_reruns"] == 3, "its group's three cached neighbours ran only to fill the batch"


def test_key_covers_numerics(tmp_path):
    from retriever_forge.llm import TransformersLLM
    from retriever_forge.numerics import cpu_has_native_bf16

    assert TransformersLLM.default().numerics == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert TransformersLLM.default(dtype="float32").numerics == "float32"
    bf16 = NeighbourSensitive()
    with CachedLLM(bf16, tmp_path / "c.sqlite") as llm:
        llm.generate(PROMPTS[:2], PARAMS)
    fp32 = NeighbourSensitive()
    fp32.numerics = "float32"
    with CachedLLM(fp32, tmp_path / "c.sqlite") as llm:
        llm.generate(PROMPTS[:2], PARAMS)
    assert len(fp32.calls) == 1, "float32 answers are not bfloat16 answers: same weights, other numerics"
