"""Generation throughput: one prompt at a time vs batched transformers vs vLLM.

The workload is 64 passage-to-query prompts (passages are Python standard library docstrings,
so every machine builds the same ones offline) on the bundled SmolLM2-135M-Instruct Q4_1:

* ``--workload inpars`` (default): exactly what the ``synthetic_queries`` asset sends — the
  bundled InPars few-shot template (question style) as a plain completion, with the pipeline's
  default sampling (greedy, up to 32 new tokens, newline stop);
* ``--workload chat``: a short zero-shot instruction wrapped in the chat template, sampled at
  temperature 0.7 (top-p 0.95).

Each measurement prints one JSON line; a Markdown table follows. Model loading and a warm-up
call are excluded from the timings.

    .venv/bin/python bench/generation.py                       # transformers: 1, 16, 32
    .venv-vllm/bin/python bench/generation.py --backends vllm  # vLLM (scripts/setup_vllm_env.sh)

The machine is reported with each line (cores, torch threads, load average before/after),
because on a shared two-core machine other processes move the figures a lot.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retriever_forge.hashing import hash_text  # noqa: E402
from retriever_forge.llm import SamplingParams, TransformersLLM, VLLMBackend, default_generator_path  # noqa: E402
from retriever_forge.querygen import QueryGenerationConfig, style_templates  # noqa: E402

STDLIB_MODULES = [
    "json", "os.path", "re", "collections", "itertools", "functools", "textwrap", "string", "random",
    "statistics", "heapq", "bisect", "shutil", "tempfile", "base64", "hashlib", "difflib", "fnmatch",
    "glob", "csv", "zipfile", "tarfile", "gzip", "pathlib", "urllib.parse", "html", "calendar",
    "datetime", "decimal", "fractions", "copy", "pprint", "inspect", "ast", "tokenize", "logging",
    "argparse", "subprocess", "threading", "queue", "sched", "socket", "ssl", "email.utils", "uuid",
]  # fmt: skip
PROMPT = "Write one short search query that the following passage answers. Reply with the query only.\n\nPassage: {passage}\n\nQuery:"
CHAT_PARAMS = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=32, seed=0, stop=("\n",))


def workload(name: str, n: int) -> tuple[list[str], SamplingParams, bool]:
    """(prompts, sampling, chat_template) for ``n`` passages."""
    passages = stdlib_passages(n)
    if name == "chat":
        return [PROMPT.format(passage=p) for p in passages], CHAT_PARAMS, True
    config = QueryGenerationConfig()
    template = style_templates(config)["question"]
    params = SamplingParams(
        temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens, seed=config.seed, stop=("\n",)
    )
    prompts = [template.render(passage=" ".join(p.split()[: config.max_passage_words]), instruction="") for p in passages]
    return prompts, params, template.chat


def stdlib_passages(n: int, min_words: int = 25, max_words: int = 120) -> list[str]:
    """``n`` docstring passages from the standard library, in a fixed order.

    Modules take turns (round-robin), so the passages cover many topics rather than one module.
    """
    per_module: list[list[str]] = []
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        docs = []
        for attr in sorted(dir(module)):
            obj = getattr(module, attr, None)
            if attr.startswith("_") or not callable(obj):
                continue
            words = (inspect.getdoc(obj) or "").split("\n\n")[0].split()
            if len(words) >= min_words:
                docs.append(" ".join(words[:max_words]))
        per_module.append(docs)
    passages: list[str] = []
    for rank in range(max(map(len, per_module))):
        for docs in per_module:
            if rank < len(docs) and docs[rank] not in passages:
                passages.append(docs[rank])
    if len(passages) < n:
        raise RuntimeError(f"only {len(passages)} passages found")
    return passages[:n]


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def measure(name: str, llm, prompts: list[str], params: SamplingParams, batch_size: int, one_at_a_time: bool, threads: int) -> dict:
    llm.generate(prompts[:2], SamplingParams(max_new_tokens=4))  # warm-up: allocators, kernels
    load_before = load_average()
    t0 = time.perf_counter()
    # One at a time: what a naive loop over passages does; batched: one call for everything.
    outputs = [g for p in prompts for g in llm.generate([p], params)] if one_at_a_time else llm.generate(prompts, params)
    seconds = time.perf_counter() - t0
    completion = sum(g.completion_tokens for g in outputs)
    prompt_tokens = sum(g.prompt_tokens for g in outputs)
    return {
        "backend": name,
        "mode": "one prompt at a time" if one_at_a_time else f"batched ({batch_size})",
        "batch_size": 1 if one_at_a_time else batch_size,
        "prompts": len(prompts),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "seconds": round(seconds, 2),
        "completion_tokens_per_s": round(completion / seconds, 1),
        "queries_per_s": round(len(prompts) / seconds, 2),
        "prompts_sha256": hash_text("\n".join(prompts))[:16],  # same workload in every venv
        "sampling": params.cache_key(),
        "model": llm.model_id,
        "numerics": getattr(llm, "numerics", None),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "load_avg_before": load_before,
        "load_avg_after": load_average(),
        "python": platform.python_version(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("VLLM_CPU_", "OMP_", "MKL_"))},
        "example": outputs[0].text,
    }


def markdown(rows: list[dict]) -> str:
    """Medians per (backend, mode) over rounds; speed-up = median of the per-round ratios to the
    same backend one prompt at a time (both sides of a ratio ran back to back in the same round)."""
    baseline = {(r["backend"], r["round"]): r["seconds"] for r in rows if r["batch_size"] == 1}
    lines = [
        "| backend | mode | rounds | prompts | completion tokens | median s | tokens/s | queries/s | speed-up vs one at a time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    lines[0] = lines[0].replace("| mode |", "| numerics | mode |")
    lines[1] = "|---" + lines[1]
    for r in rows:
        groups.setdefault((r["backend"], r["mode"]), []).append(r)
    for (backend, mode), runs in groups.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        ratios = [baseline[backend, r["round"]] / r["seconds"] for r in runs if (backend, r["round"]) in baseline]
        speedup = f"{statistics.median(ratios):.2f}×" if ratios else "—"
        lines.append(
            f"| {backend} | {runs[0].get('numerics')} | {mode} | {len(runs)} | {runs[0]['prompts']} | {runs[0]['completion_tokens']} | {seconds:.1f} | "
            f"{runs[0]['completion_tokens'] / seconds:.1f} | {runs[0]['prompts'] / seconds:.2f} | {speedup} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="transformers", help="comma list: transformers, vllm")
    parser.add_argument("--batch-sizes", default="1,16,32", help="transformers; 1 means one prompt at a time")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are quoted")
    parser.add_argument("--workload", choices=["inpars", "chat"], default="inpars")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--vllm-dtype", default="auto", help="vLLM dtype (auto: float32 on CPU)")
    parser.add_argument("--dtype", default="auto", help="transformers compute dtype: auto (bf16 where native), float32, bfloat16")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    prompts, params, chat = workload(args.workload, args.prompts)
    folder, name = default_generator_path()
    rows = []

    def emit(row: dict, round_: int) -> None:
        row = {"workload": args.workload, "round": round_, **row}
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(line + "\n")

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "transformers" in backends:
        llm = TransformersLLM(folder, gguf_file=name, chat_template=chat, dtype=args.dtype)
        llm.load()
        # Rounds alternate the modes (1, 16, 32, 1, 16, 32...): background load on a shared
        # machine then weighs on every mode alike, and each round gives one ratio per mode.
        for round_ in range(args.rounds):
            for size in [int(s) for s in args.batch_sizes.split(",")]:
                llm.batch_size = max(size, 1)
                emit(measure("transformers", llm, prompts, params, size, one_at_a_time=size == 1, threads=threads), round_)
    if "vllm" in backends:
        vllm_llm = VLLMBackend(folder, gguf_file=name, max_model_len=1024, enforce_eager=True, chat_template=chat, dtype=args.vllm_dtype)
        vllm_llm.load()
        # The same engine one prompt at a time (a loop of single-prompt calls) and batched, in
        # alternating rounds, so the speed-up is taken on one model, one engine, one dtype.
        for round_ in range(args.rounds):
            for one in (True, False) if round_ % 2 == 0 else (False, True):
                emit(measure("vllm", vllm_llm, prompts, params, len(prompts), one_at_a_time=one, threads=torch.get_num_threads()), round_)
    print()
    print(markdown(rows))


if __name__ == "__main__":
    main()
