"""Shared pieces of the fault-injection suite: a deterministic fake LLM, tiny inputs, and
running a stage in a child process that is SIGKILLed at a chosen point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from retriever_forge import schemas
from retriever_forge.hashing import hash_text
from retriever_forge.llm.base import Generation, SamplingParams

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("child.py")

CORPUS = pl.DataFrame(
    {
        "doc_id": [f"d{i:02d}" for i in range(12)],
        "title": [f"Topic {i}" for i in range(12)],
        "text": [f"Passage number {i} talks about subject {i * 7 % 5} and detail {i * 3 % 4}." for i in range(12)],
    },
    schema=schemas.CORPUS,
)


class HashLLM:
    """A deterministic LLM stand-in: its answer is a function of the prompt only.

    One prompt in four gets an empty (unparseable) answer, like a small model that rambles.
    ``delay_after_calls``: calls after that many sleep for a minute (the parent kills us then).
    """

    model_id = "hash-llm"
    weights_hash = "a" * 64

    def __init__(self, delay_after_calls: int | None = None):
        self.calls: list[list[str]] = []
        self.delay_after_calls = delay_after_calls

    def render_prompt(self, prompt: str) -> str:
        return prompt

    def _maybe_stall(self, prompts) -> None:
        self.calls.append(list(prompts))
        if self.delay_after_calls is not None and len(self.calls) > self.delay_after_calls:
            time.sleep(60)

    @staticmethod
    def answer(prompt: str) -> str:
        h = hash_text(prompt)
        return "" if int(h[0], 16) % 4 == 0 else f"which topic is {h[:6]} about"

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        self._maybe_stall(prompts)
        return [Generation(self.answer(p), len(p.split()), 5) for p in prompts]

    def choice_logprobs(self, prompts: list[str], choices: list[str]) -> list[list[float]]:
        self._maybe_stall(prompts)
        out = []
        for p in prompts:
            h = int(hash_text(p)[:8], 16)
            raw = [-(1.0 + ((h >> (4 * i)) & 0xF)) for i in range(len(choices))]
            m = max(raw)
            total = float(np.log(sum(np.exp(np.array(raw) - m)))) + m
            out.append([r - total for r in raw])
        return out

    @property
    def prompts_seen(self) -> int:
        return sum(len(c) for c in self.calls)


def embeddings(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip


def kill_child_at_marker(stage: str, workdir: Path, *args: str, timeout_s: float = 120) -> None:
    """Run ``child.py stage workdir args`` and SIGKILL it as soon as it writes ``workdir/KILL_ME``."""
    marker = workdir / "KILL_ME"
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), stage, str(workdir), *args], env=child_env(), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"child {stage} exited ({proc.returncode}) before its kill point:\n{proc.stdout.read()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"child {stage} did not reach its kill point in {timeout_s} s")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, proc.returncode


def mark_and_stall(workdir: Path) -> None:
    """Called by a child at its kill point: signal the parent, then wait to be killed."""
    (Path(workdir) / "KILL_ME").write_text(str(os.getpid()))
    time.sleep(120)
    raise SystemExit("the parent should have killed this process")


# --------------------------------------------------------------------------------------------
# The stages, as the child runs them (killed) and the tests run them (uninterrupted / resumed).


def run_generation(workdir: Path, store_root: Path, llm, progress=None):
    """Synthetic queries for CORPUS through the durable cache (3 prompts a batch), then stored."""
    from retriever_forge.artifacts import ArtifactStore
    from retriever_forge.llm import CachedLLM
    from retriever_forge.querygen import QueryGenerationConfig, generate_synthetic_queries

    cfg = QueryGenerationConfig(documents_to_sample=None, round_trip_k=None, seed=0)
    with CachedLLM(llm, Path(workdir) / "llm-cache.sqlite", batch_size=3, progress=progress) as cached:
        queries = generate_synthetic_queries(CORPUS, cached, cfg, completion_llm=cached)
    return ArtifactStore(store_root).put_table(queries, "synthetic_queries"), queries


MINING_QUERIES = 8


def run_mining(store_root: Path):
    """Hard negatives for 8 queries over CORPUS (fixed random embeddings), then stored."""
    from retriever_forge.artifacts import ArtifactStore
    from retriever_forge.mining import MiningConfig, mine_hard_negatives

    cfg = MiningConfig(rank_start=2, rank_end=8, negatives_per_query=3, judge_threshold=None, query_chunk_size=2)
    ids = CORPUS["doc_id"].to_list()
    candidates = mine_hard_negatives(
        embeddings(MINING_QUERIES, seed=1), embeddings(len(ids), seed=2), [f"q{i}" for i in range(MINING_QUERIES)],
        ids[:MINING_QUERIES], ids, cfg,
    )  # fmt: skip
    return ArtifactStore(store_root).put_table(candidates, "hard_negatives")


def run_indexing(workdir: Path, store_root: Path):
    """A FAISS index of CORPUS (fixed random embeddings), built in a folder and stored."""
    from retriever_forge.artifacts import ArtifactStore
    from retriever_forge.indexing import build_corpus_index

    folder = Path(workdir) / "index-build"
    build_corpus_index(embeddings(CORPUS.height, seed=2), CORPUS["doc_id"].to_list(), folder, index_type="flat")
    return ArtifactStore(store_root).put_folder(folder, "corpus_index", payload="index")


def run_training(tiny_model: str, workdir: Path, store_root: Path, progress=None):
    """Fine-tune the tiny model (checkpoints every 2 steps), then store the model folder."""
    import torch

    from retriever_forge.artifacts import ArtifactStore
    from retriever_forge.training import TrainingConfig, train_encoder
    from tests.test_training import FAST, _examples

    torch.set_num_threads(1)
    cfg = TrainingConfig(epochs=2, checkpoint_every_steps=2, eval_every_steps=3, **FAST)
    result = train_encoder(tiny_model, _examples(3, 1), Path(workdir) / "training", cfg, progress=progress)
    return ArtifactStore(store_root).put_folder(result.model_dir, "fine_tuned_encoder"), result


class FakeServedModel:
    """What :class:`tests.llm.openai_server.OpenAITestServer` needs from a model, answering like
    :class:`HashLLM`, so server-side faults are tested in milliseconds without loading weights."""

    model_id = "fake-served-model"

    def variant(self, chat_template: bool = True) -> FakeServedModel:
        return self

    def render_prompt(self, prompt: str) -> str:
        return prompt

    def tokenizer(self, text: str) -> dict:
        return {"input_ids": text.split()}

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        return [Generation(HashLLM.answer(p), len(p.split()), 5) for p in prompts]

    def next_token_logprobs(self, prompts: list[str], top_k: int = 20) -> list[list[tuple[int, str, float]]]:
        rows = []
        for p in prompts:
            h = int(hash_text(p)[:8], 16)
            raw = sorted(((-(1.0 + ((h >> (4 * i)) & 0xF)), str(i)) for i in range(4)), reverse=True)
            rows.append([(i, text, lp) for i, (lp, text) in enumerate(raw)][:top_k])
        return rows
