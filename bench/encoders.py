"""Encoders and adapters on one BEIR folder: full fine-tuning vs LoRA vs SPT, pooling heads, a
decoder LLM (SmolLM2-135M) as embedder with and without its causal mask.

Every row trains on the same examples and is scored on the same human-judged queries:

1. LLM queries (the bundled SmolLM2-135M-Instruct, the pipeline's prompts and filters, no
   round trip) for ``--passages`` passages with an abstract; cached in ``--home``, so reruns
   pay nothing for generation. No judging (the judge filter is off).
2. Hard negatives from the base MiniLM (FAISS, TopK-PercPos 0.95), one table for all rows.
3. Each row runs in a fresh process (its own peak RSS): ``--steps`` training steps, no dev
   evaluation (the weights after the last step are scored), then nDCG@10 / Recall@100 on the
   judged queries over ``--eval`` documents (``all``: the whole corpus; ``pool``: each query's
   BM25 top ``--pool-depth`` plus every judged document, one pool for every row).

    nice -n 10 .venv/bin/python bench/encoders.py ../shared/datasets/cacm --home /tmp/i15/encoders

Rows (``--rows`` picks a subset): see ``ROWS``. Adapters use a 10x learning rate (2e-4, the
usual LoRA setting; 2e-5 moves a rank-8 adapter little in a few steps; ``--adapter-lr``); full fine-tuning keeps
the pipeline's 2e-5. Decoder rows pool the last token and prefix queries with an instruction.
Results go to ``--home``/rows.jsonl and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

INSTRUCTION = "Instruct: Given a search query, retrieve relevant computer science abstracts\nQuery: "
ADAPTER_LR = 2e-4
_DECODER = {"pooling": "last", "query_instruction": INSTRUCTION}
ROWS: dict[str, dict] = {
    "minilm base": {"model": "minilm", "train": False, "cfg": {}},
    "minilm full FT": {"model": "minilm", "cfg": {}},
    "minilm LoRA r8": {"model": "minilm", "cfg": {"adapter": "lora", "learning_rate": ADAPTER_LR}},
    "minilm SPT (LoRA's budget)": {"model": "minilm", "cfg": {"adapter": "spt", "learning_rate": ADAPTER_LR}},
    "minilm full FT + gem": {"model": "minilm", "cfg": {"pooling": "gem"}},
    "minilm full FT + ggem": {"model": "minilm", "cfg": {"pooling": "ggem"}},
    "minilm full FT + latent_attention": {"model": "minilm", "cfg": {"pooling": "latent_attention"}},
    # In-batch negatives at scale: 256 queries per batch in one graph vs GradCache chunks of 32.
    "minilm full FT batch 256 one graph": {"model": "minilm", "cfg": {"batch_size": 256, "max_steps": 3}},
    "minilm full FT batch 256 GradCache 32": {"model": "minilm", "cfg": {"batch_size": 256, "max_steps": 3, "grad_cache_chunk_size": 32}},
    "smollm2 base causal": {"model": "smollm2", "train": False, "cfg": {**_DECODER}},
    "smollm2 base bidirectional": {"model": "smollm2", "train": False, "cfg": {**_DECODER, "bidirectional": True}},
    "smollm2 LoRA causal": {"model": "smollm2", "cfg": {**_DECODER, "adapter": "lora", "learning_rate": ADAPTER_LR}},
    "smollm2 LoRA bidirectional": {
        "model": "smollm2",
        "cfg": {**_DECODER, "adapter": "lora", "learning_rate": ADAPTER_LR, "bidirectional": True},
    },
}


def model_path(name: str) -> str:
    if name == "minilm":
        from retriever_forge.encoding import resolve_model_path

        return resolve_model_path("all-MiniLM-L6-v2")
    from retriever_forge.llm.weights import default_generator_path, gguf_to_hf_folder

    return str(gguf_to_hf_folder(*default_generator_path()))


def load_beir(folder: Path):
    sys.path.insert(0, str(ROOT / "bench"))
    from train_probe import load_beir as probe_load

    return probe_load(folder)


# ------------------------------------------------------------------------------------ data


def prepare(folder: Path, home: Path, passages: int, seed: int, queries_table: str | None = None) -> Path:
    """Training examples (queries + mined negatives) for every row, built once per home."""
    out = home / f"examples-{'table' if queries_table else passages}-{seed}.parquet"
    if out.exists():
        return out
    from retriever_forge.orchestration.resources import LLMResource
    from retriever_forge.querygen import QueryGenerationConfig, generate_synthetic_queries

    corpus, _, _ = load_beir(folder)
    t0 = time.perf_counter()
    if queries_table:  # a finished pipeline run's synthetic_queries table (same prompts and filters)
        queries = pl.read_parquet(queries_table).filter(pl.col("dropped_by").is_null()).with_columns(split=pl.lit("train"))
        return _mine(corpus, queries, home, out, seed)
    llm = LLMResource(cache_path=str(home / "generations.sqlite"))
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    qcfg = QueryGenerationConfig(documents_to_sample=passages, min_passage_words=20, queries_per_document=3, round_trip_k=None, seed=seed)
    generated = generate_synthetic_queries(corpus, llm.build(home, chat=True, progress=say), qcfg, progress=say,
                                           completion_llm=llm.build(home, chat=False, progress=say))  # fmt: skip
    queries = generated.filter(pl.col("dropped_by").is_null()).with_columns(split=pl.lit("train"))
    print(f"generation: {generated.height} generated, {queries.height} kept, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return _mine(corpus, queries, home, out, seed)


def _mine(corpus: pl.DataFrame, queries: pl.DataFrame, home: Path, out: Path, seed: int) -> Path:
    from retriever_forge.datasets import passage_text_expr
    from retriever_forge.encoding import encode, load_encoder
    from retriever_forge.mining import MiningConfig, build_training_examples, mine_hard_negatives

    base = load_encoder("all-MiniLM-L6-v2", device="cpu", max_seq_length=256)
    corpus_emb = encode(base, corpus.select(passage_text_expr().alias("p"))["p"].to_list(), batch_size=64)
    q_emb = encode(base, queries["text"].to_list(), batch_size=64)
    candidates = mine_hard_negatives(q_emb, corpus_emb, queries["query_id"].to_list(), queries["doc_id"].to_list(),
                                     corpus["doc_id"].to_list(), MiningConfig(seed=seed))  # fmt: skip
    examples = build_training_examples(queries, corpus, candidates)
    home.mkdir(parents=True, exist_ok=True)
    examples.write_parquet(out)
    return out


def eval_documents(corpus: pl.DataFrame, queries: pl.DataFrame, qrels: dict, mode: str, depth: int) -> pl.DataFrame:
    if mode == "all":
        return corpus
    from retriever_forge.lexical import bm25_run

    keep = {d for run in bm25_run(corpus, queries, k=depth).values() for d in run} | {d for q in qrels.values() for d in q}
    return corpus.filter(pl.col("doc_id").is_in(sorted(keep)))


# ------------------------------------------------------------------------------------ one row


def run_row(name: str, args) -> dict:
    import torch

    from retriever_forge.datasets import passage_text_expr
    from retriever_forge.encoding import Encoder, encode, encode_queries, load_encoder, open_sentence_transformer
    from retriever_forge.evaluation import score_run
    from retriever_forge.numerics import bf16_is_native
    from retriever_forge.search import dense_run
    from retriever_forge.training import TrainingConfig, configure_encoder, train_encoder

    row = ROWS[name]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    folder = Path(args.folder)
    corpus, queries, qrels = load_beir(folder)
    examples = pl.read_parquet(args.examples)
    path = model_path(row["model"])
    cfg = TrainingConfig(**{"max_steps": args.steps, "batch_size": args.batch_size, "negatives_per_example": args.negatives,
                            "max_seq_length": args.max_seq_length, "eval_at_start": False, "seed": args.seed, **row["cfg"]})  # fmt: skip
    if cfg.adapter != "none":
        cfg = dataclasses.replace(cfg, learning_rate=args.adapter_lr)
    record = {"row": name, "steps": 0, "trainable_parameters": None, "step_seconds": None}
    if row.get("train", True):
        stamps: list[float] = []
        result = train_encoder(path, examples, Path(args.home) / "runs" / name.replace(" ", "_").replace(",", ""), cfg,
                               progress=lambda e: stamps.append(time.perf_counter()), resume=False)  # fmt: skip
        steps = np.diff(stamps)
        record.update(steps=len(result.history), trainable_parameters=result.trainable_parameters,
                      total_parameters=(result.adapter or {}).get("total_parameters"),
                      step_seconds=round(statistics.median(steps), 2) if len(steps) else None,
                      first_loss=result.history[0]["loss"], last_loss=result.history[-1]["loss"],
                      adapter={k: v for k, v in (result.adapter or {}).items() if k in ("lora_modules", "sparse_modules", "budget")} or None)  # fmt: skip
        if record["adapter"]:
            record["adapter"]["lora_modules"] = len(record["adapter"]["lora_modules"])
            record["adapter"]["sparse_positions"] = sum(record["adapter"].pop("sparse_modules").values())
        enc = load_encoder(str(result.model_dir), device="cpu", max_seq_length=args.eval_max_length)
    else:
        model = open_sentence_transformer(path, device="cpu")
        configure_encoder(model, cfg)
        model.max_seq_length = min(args.eval_max_length, model.max_seq_length or args.eval_max_length)
        enc = Encoder(model, name, path, "untrained")
    if record["trainable_parameters"] is None:
        record["total_parameters"] = sum(p.numel() for p in enc.model.parameters())
    docs = eval_documents(corpus, queries, qrels, args.eval, args.pool_depth)
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_is_native("cpu")):
        doc_emb = encode(enc, docs.select(passage_text_expr().alias("p"))["p"].to_list(), batch_size=32)
        q_emb = encode_queries(enc, queries["text"].to_list(), batch_size=32)
    record["eval_seconds"] = round(time.perf_counter() - t0, 1)
    run = dense_run(q_emb, doc_emb, queries["query_id"].to_list(), docs["doc_id"].to_list(), k=100)
    per_query, agg = score_run(run, qrels)
    record["model"] = row["model"]
    record["ndcg_per_query"] = dict(zip(per_query["query_id"].to_list(), per_query["ndcg_cut_10"].round(4).to_list(), strict=True))
    record.update(ndcg_cut_10=round(agg["ndcg_cut_10"], 4), recall_100=round(agg["recall_100"], 4), eval_docs=docs.height,
                  queries=len(run), peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))  # fmt: skip
    return record


def versus_base(row: dict, rows: list[dict]) -> str:
    """nDCG@10 change against the first untrained row of the same model, with its paired randomization p."""
    from retriever_forge.significance import paired_comparison

    base = next((r for r in rows if r.get("model") == row.get("model") and not r.get("steps") and r is not row), None)
    if not row.get("steps") or base is None or "ndcg_per_query" not in base or "ndcg_per_query" not in row:
        return ""
    queries = sorted(base["ndcg_per_query"])
    result = paired_comparison(
        np.array([row["ndcg_per_query"].get(q, 0.0) for q in queries]), np.array([base["ndcg_per_query"][q] for q in queries])
    )
    return f"{result['delta']:+.4f} (p = {result['p_value']:.3f})"


def table(rows: list[dict]) -> str:
    lines = ["| row | trainable params | nDCG@10 | vs base (p) | Recall@100 | step s (median) | peak RSS GB | loss first → last |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        params = f"{r['trainable_parameters']:,}" if r.get("trainable_parameters") else f"— (of {r.get('total_parameters', 0):,})"
        loss = f"{r['first_loss']:.3f} → {r['last_loss']:.3f}" if r.get("first_loss") is not None else ""
        step = f"{r['step_seconds']:.2f}" if r.get("step_seconds") else ""
        lines.append(
            f"| {r['row']} | {params} | {r['ndcg_cut_10']:.4f} | {versus_base(r, rows)} | {r['recall_100']:.4f} | {step} | {r['peak_rss_gb']:.1f} | {loss} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--home", default="/tmp/retriever-forge-bench-encoders")
    ap.add_argument("--passages", type=int, default=300)
    ap.add_argument("--queries-table", default=None, help="use this synthetic_queries parquet (kept rows) instead of generating")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--negatives", type=int, default=1)
    ap.add_argument("--max-seq-length", type=int, default=96)
    ap.add_argument("--eval", choices=["all", "pool"], default="pool")
    ap.add_argument("--pool-depth", type=int, default=20, help="--eval pool: BM25 depth per query")
    ap.add_argument("--eval-max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: best on a shared machine)")
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names, in the order to run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adapter-lr", type=float, default=ADAPTER_LR, help="learning rate of the adapter (LoRA, SPT) rows")
    ap.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: run one row in this process
    ap.add_argument("--examples", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    home = Path(args.home)
    if args.row:
        print(json.dumps(run_row(args.row, args)), flush=True)
        return []
    os.environ.setdefault("RETRIEVER_FORGE_HOME", str(home / "forge"))
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    examples = prepare(Path(args.folder), home, args.passages, args.seed, args.queries_table)
    n = pl.read_parquet(examples).height
    print(f"{n} training examples ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    rows = []
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    for name in names:
        if name not in ROWS:
            ap.error(f"unknown row {name!r}; known: {', '.join(ROWS)}")
    for name in names:
        cmd = [sys.executable, __file__, args.folder, "--home", str(home), "--row", name, "--examples", str(examples)]
        for flag in (
            "steps",
            "batch_size",
            "negatives",
            "max_seq_length",
            "eval",
            "pool_depth",
            "eval_max_length",
            "threads",
            "seed",
            "adapter_lr",
        ):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        started = time.perf_counter()
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
        if done.returncode != 0 or not lines:
            print(f"row {name!r} failed (exit {done.returncode})", file=sys.stderr)
            continue
        record = {**lines[-1], "seconds": round(time.perf_counter() - started, 1), "examples": n}
        rows.append(record)
        print(json.dumps(record), flush=True)
        with open(home / "rows.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
