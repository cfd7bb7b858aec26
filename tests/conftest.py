"""Shared fixtures: tiny BEIR datasets written inline, a fake LLM with known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from retriever_forge.llm.base import Generation, SamplingParams

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

TINY_CORPUS = [
    {"_id": "d1", "title": "Sorting", "text": "Quicksort partitions an array around a pivot and sorts the parts recursively."},
    {"_id": "d2", "title": "Hashing", "text": "A hash table maps keys to buckets with a hash function for constant time lookup."},
    {
        "_id": "d3",
        "title": "Graphs",
        "text": "Dijkstra's algorithm finds shortest paths from a source in graphs with non-negative weights.",
    },
    {"_id": "d4", "title": "Compilers", "text": "A parser turns a token stream into a syntax tree according to a grammar."},
    {"_id": "d5", "title": "Networks", "text": "TCP provides reliable ordered delivery of a byte stream between hosts."},
    {"_id": "d6", "title": "Databases", "text": "A B-tree index keeps keys sorted and balanced so lookups take logarithmic time."},
]
TINY_QUERIES = [{"_id": "q1", "text": "shortest path algorithm"}, {"_id": "q2", "text": "balanced tree index for lookups"}]
TINY_QRELS = "query-id\tcorpus-id\tscore\nq1\td3\t2\nq2\td6\t1\n"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for servers a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_beir(root: Path, corpus=TINY_CORPUS, queries=TINY_QUERIES, qrels=TINY_QRELS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text(qrels)
    return root


def clustered_embeddings(n: int = 3000, dim: int = 32, centers: int = 30, seed: int = 0):
    """``n`` unit vectors in ``centers`` noisy clusters: easy for exact search, a real test of approximate indexes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim))
    x = c[rng.integers(0, centers, n)] + 0.6 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_demo_run(tmp_path_factory):
    """The whole graph on the demo, kept tiny (tests/test_pipeline.py's TINY_RUN), materialized once per
    session into an on-disk instance, so a Dagster webserver can serve it too (tests/test_ui.py).

    Returns (artifact home, instance, result, instance dir).
    """
    import dagster as dg

    from retriever_forge.orchestration.assets.common import sync_dataset_partitions
    from tests.test_pipeline import _materialize

    home, dagster_home = tmp_path_factory.mktemp("forge"), tmp_path_factory.mktemp("dagster_home")
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    instance = dg.DagsterInstance.local_temp(str(dagster_home))
    sync_dataset_partitions(instance)
    result = _materialize(home, instance)
    return home, instance, result, dagster_home


@pytest.fixture
def tiny_beir(tmp_path) -> Path:
    return write_beir(tmp_path / "tiny")


class ScriptedLLM:
    """A deterministic LLM stand-in for testing the *callers* (filters, parsing, grading).

    The backends themselves are tested against real models in tests/llm.
    """

    model_id = "scripted"
    weights_hash = "0" * 64

    def __init__(self, answers=None, grades=None):
        self.answers = answers or (lambda prompt: "Query: what is this passage about")
        self.grades = grades or (lambda prompt: [0.1, 0.2, 0.3, 0.4])
        self.calls = 0
        self.stats = {}

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        self.calls += 1
        return [Generation(text=self.answers(p), prompt_tokens=len(p.split()), completion_tokens=5) for p in prompts]

    def choice_logprobs(self, prompts: list[str], choices: list[str]) -> list[list[float]]:
        self.calls += 1
        out = []
        for p in prompts:
            probs = self.grades(p)
            out.append([math.log(x) for x in probs])
        return out


# Tiny random encoders (BERT and Llama), shared by the adapter and encoder tests.


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """The tiny random sentence-transformers BERT of :mod:`tests._tiny_encoder`."""
    from tests._tiny_encoder import tiny_encoder_folder

    return tiny_encoder_folder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory) -> str:
    """A 2-layer random Llama with the tiny WordPiece vocabulary (a plain Hugging Face folder)."""
    import torch
    from transformers import BertTokenizerFast, LlamaConfig, LlamaModel

    from tests._tiny_encoder import WORDS

    root = tmp_path_factory.mktemp("tiny-llama")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), ".", ":", ","]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(root / "vocab.txt")).save_pretrained(str(root))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)  # fmt: skip
    LlamaModel(config).save_pretrained(str(root), safe_serialization=True)
    return str(root)


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for tiny models: OpenMP's spinning threads only cost time, a lot when
    another process holds one of the two cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
