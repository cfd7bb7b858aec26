"""Shared pieces of the speed benchmarks: workloads, alternating timers, JSON lines, tables.

Every comparison runs both sides in one process, alternating (A B A B ...), and quotes the
median of each side and the median of the per-round ratios: on a shared machine background
load moves both sides of a round alike, so the ratio is far steadier than either time.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # sentence-transformers forces progress bars in mine_hard_negatives
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATASETS = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "bench" / "results"
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


# --------------------------------------------------------------------------------------------
# Workloads.


def load_beir_passages(folder: str | Path, max_docs: int | None = None) -> tuple[list[str], list[str]]:
    """``(doc_ids, passage texts)`` of a BEIR folder's corpus, read in place (never copied)."""
    from retriever_forge.datasets import passage_text

    ids, texts = [], []
    with open(Path(folder) / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            text = passage_text(d.get("title"), d.get("text"))
            if text:
                ids.append(str(d["_id"]))
                texts.append(text)
            if max_docs and len(ids) >= max_docs:
                break
    return ids, texts


def pseudo_queries(doc_ids: list[str], texts: list[str], n: int | None = None, seed: int = 0, max_words: int = 12):
    """One weak query per passage (its first sentence, cut to ``max_words``), like the pipeline's
    one synthetic query per passage: ``(query_ids, query_texts, positive_ids)``."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    order = order[: n or len(order)]
    q_texts = []
    for i in order:
        body = texts[i].split(": ", 1)[-1]
        q_texts.append(" ".join(_SENTENCE.split(body.strip())[0].split()[:max_words]))
    return [f"q{i}" for i in order], q_texts, [doc_ids[i] for i in order]


def _stdlib_vocabulary() -> list[str]:
    """Words of the standard library's docstrings (the same on every machine with this Python)."""
    import importlib
    import inspect

    words: dict[str, None] = {}
    for name in ("json", "os", "re", "collections", "itertools", "functools", "textwrap", "string", "random", "statistics",
                 "heapq", "bisect", "shutil", "tempfile", "hashlib", "difflib", "csv", "zipfile", "pathlib", "datetime",
                 "decimal", "fractions", "inspect", "ast", "logging", "argparse", "subprocess", "threading", "socket", "email"):  # fmt: skip
        module = importlib.import_module(name)
        for attr in sorted(dir(module)):
            doc = inspect.getdoc(getattr(module, attr, None)) or ""
            for w in re.findall(r"[A-Za-z][a-z]{2,14}", doc):
                words.setdefault(w.lower(), None)
    return sorted(words)


def synthetic_corpus(n: int, seed: int = 0, min_words: int = 15, max_words: int = 90) -> tuple[list[str], list[str]]:
    """``n`` deterministic passages (doc ids, texts) recombined from stdlib docstring words.

    Each passage draws most words from one of ``n // 50 + 1`` topics (a few hundred words each),
    so passages of a topic share vocabulary and dense search has near neighbours to find, and
    lengths vary like real passages (uniform in ``min_words..max_words``).
    """
    vocab = _stdlib_vocabulary()
    rng = random.Random(seed)
    topics = [rng.sample(vocab, 200) for _ in range(n // 50 + 1)]
    ids, texts = [], []
    for i in range(n):
        topic = topics[rng.randrange(len(topics))]
        length = rng.randint(min_words, max_words)
        words = [rng.choice(topic) if rng.random() < 0.8 else rng.choice(vocab) for _ in range(length)]
        ids.append(f"s{i}")
        texts.append(" ".join(words).capitalize() + ".")
    return ids, texts


def workload(name: str, max_docs: int | None = None) -> tuple[list[str], list[str]]:
    """A named corpus: a BEIR folder under ../shared/datasets, or ``synthetic-N``."""
    if name.startswith("synthetic-"):
        n = int(name.split("-", 1)[1].replace("k", "000"))
        return synthetic_corpus(min(n, max_docs or n))
    return load_beir_passages(DATASETS / name, max_docs)


# --------------------------------------------------------------------------------------------
# Timing.


def alternate(sides: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Run each side once per round, in turn (A B A B ...; the first side alternates per round
    so neither always runs on a warm cache); seconds per side per round."""
    names = list(sides)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            sides[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def ratio_summary(times: dict[str, list[float]], ours: str, theirs: str) -> dict:
    """Median seconds of each side and the median per-round speed-up (theirs / ours)."""
    ratios = [t / o for o, t in zip(times[ours], times[theirs], strict=True)]
    return {
        f"{ours}_median_s": round(statistics.median(times[ours]), 4),
        f"{theirs}_median_s": round(statistics.median(times[theirs]), 4),
        "speedup_median": round(statistics.median(ratios), 3),
        "speedup_min": round(min(ratios), 3),
        "speedup_max": round(max(ratios), 3),
        "rounds": len(ratios),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (MiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024 if sys.platform != "darwin" else kb / 2**20, 1)


def machine(threads: int | None = None) -> dict:
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {"cpu_count": os.cpu_count(), "torch_threads": threads, "load_avg": load, "python": platform.python_version()}


def set_threads(threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


class Emitter:
    """Prints one JSON line per measurement (and appends it to ``out``); keeps the rows."""

    def __init__(self, out: str | None = None):
        self.rows: list[dict] = []
        self.out = Path(out) if out else None

    def __call__(self, row: dict) -> dict:
        self.rows.append(row)
        line = json.dumps(row, sort_keys=False)
        print(line, flush=True)
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            with open(self.out, "a") as f:
                f.write(line + "\n")
        return row


def markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)
