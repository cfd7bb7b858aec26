"""Judge self-check per model: how well an LLM judge tells a query's own source passage from a
random passage of the corpus (ROC AUC of its expected grade), on the same queries for every model.

This is the pipeline's own self-check (:func:`retriever_forge.judging.calibrate_judge`, the
``relevance_judgments`` asset's first step), run alone so that judges can be compared without a
whole pipeline run. The queries are a ``synthetic_queries`` table a pipeline run wrote (its kept
train and dev rows); the passages come from the BEIR folder that run read.

Usage::

    .venv/bin/python bench/judge_auc.py ../shared/datasets/cacm \\
        --queries-table <home>/<synthetic_queries parquet of a cacm run> \\
        --models smollm2-135m,gemma3-270m --queries 100

Prints one JSON line per model: ``auc``, ``pairs``, the mean expected grade and the argmax-grade
counts of each pair type, ``used`` at the pipeline's threshold, and the seconds it took.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's retriever_forge, not an installed one

from bench._common import Emitter, machine, peak_rss_mb  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="the BEIR folder the queries were written for (its corpus.jsonl)")
    ap.add_argument("--queries-table", required=True, help="a synthetic_queries parquet from a pipeline run")
    ap.add_argument("--models", default="smollm2-135m", help="comma-separated: bundled names (smollm2-135m, gemma3-270m) or model paths")
    ap.add_argument("--queries", type=int, default=100, help="calibration queries (each gives 2 pairs), as calibration_queries")
    ap.add_argument("--min-auc", type=float, default=0.75, help="the pipeline's min_judge_auc, for the 'used' column")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", help="generation cache (SQLite); default: a fresh temporary one")
    ap.add_argument("--out", help="append the JSON lines to this file too")
    args = ap.parse_args(argv)

    import polars as pl

    from retriever_forge.datasets import read_corpus
    from retriever_forge.judging import JudgingConfig, calibrate_judge
    from retriever_forge.llm import build_llm

    corpus, _ = read_corpus(Path(args.folder) / "corpus.jsonl")
    queries = pl.read_parquet(args.queries_table).filter(pl.col("dropped_by").is_null())
    cfg = JudgingConfig(calibration_queries=args.queries, min_judge_auc=args.min_auc, seed=args.seed)
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="judge-auc-")) / "generations.sqlite"
    emit = Emitter(args.out)
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        judge = build_llm("transformers", model=model, chat_template=True, cache_path=cache)
        start = time.perf_counter()
        calibration, check = calibrate_judge(queries, corpus, judge, cfg)
        emit({
            "model": model, "auc": check["auc"], "pairs": check["pairs"], "used": check["used"], "min_auc": args.min_auc,
            "grades": check["grades"], "seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": peak_rss_mb(),
            "queries_table": args.queries_table, **machine(),
        })  # fmt: skip


if __name__ == "__main__":
    main()
