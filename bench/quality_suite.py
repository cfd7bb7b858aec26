"""Quality suite: ``bench/quality.py`` on each BEIR folder given, one Markdown table at the end.

Each folder runs in its own process with the defaults (the ``standard`` budget, no config) unless
``--config``/``--budget``/``--set`` say otherwise, on its own store (``--home-root/<name>``), and
is scored on the folder's human judgments only. Columns: BM25, the base encoder, the fine-tuned
encoder and its gain, RRF(BM25, base) and RRF(BM25, fine-tuned) (k=60, top 100 of each: the bar a
user has without training), wall minutes of the whole run, training queries, training steps
(kept / run; 0 kept: the base weights were published) and the judge's self-check ROC AUC
(``used``/``off``: whether its grades steered training).

    .venv/bin/python bench/quality_suite.py ../shared/datasets/cacm ../shared/datasets/msmarco-5k

Prints each run's JSON lines as they come, then the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _score(by: dict[str, dict], system: str) -> str:
    return f"{by[system]['ndcg_cut_10']:.4f}" if system in by else "n/a"


def suite_table(results: dict[str, list[dict]]) -> str:
    """The Markdown table, one row per folder, from its ``bench/quality.py`` JSON lines."""
    lines = [
        "| collection | queries | BM25 | base | fine-tuned | gain | RRF(BM25, base) | RRF(BM25, fine-tuned) | minutes | training queries | steps (kept / run) | judge AUC |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, rows in results.items():
        by = {r["system"]: r for r in rows}
        if not {"bm25", "base", "fine-tuned"} <= by.keys():
            lines.append(f"| {name} | failed | | | | | | | | | | |")
            continue
        ft = by["fine-tuned"]
        judge = ft.get("judge") or {}
        auc = "n/a" if judge.get("auc") is None else f"{judge['auc']:.3f} ({'used' if judge.get('used') else 'off'})"

        lines.append(
            f"| {name} | {ft['queries']} | {_score(by, 'bm25')} | {_score(by, 'base')} | {_score(by, 'fine-tuned')} | "
            f"{ft['ndcg_cut_10'] - by['base']['ndcg_cut_10']:+.4f} | {_score(by, 'rrf-base')} | {_score(by, 'rrf-fine-tuned')} | "
            f"{ft['seconds'] / 60:.1f} | {ft.get('train_queries', '?')} | {ft.get('best_step', '?')} / {ft.get('steps', '?')} | {auc} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", help="BEIR folders (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    ap.add_argument("--config", help="run-config YAML for every folder (default: none, the budget preset's defaults)")
    ap.add_argument("--budget", choices=["quick", "standard", "thorough"], help="budget preset (default standard)")
    ap.add_argument("--home-root", default=".forge-bench/suite", help="one store per folder under this (default .forge-bench/suite)")
    ap.add_argument("--set", action="append", default=[], help="config override for every folder (ASSET.FIELD=VALUE)")
    ap.add_argument("--on-bad-rows", choices=["error", "quarantine"], default="error")
    args = ap.parse_args(argv)
    results: dict[str, list[dict]] = {}
    for folder in args.folders:
        name = Path(folder).resolve().name
        cmd = [
            sys.executable,
            str(HERE / "quality.py"),
            folder,
            "--home",
            str(Path(args.home_root) / name),
            "--on-bad-rows",
            args.on_bad_rows,
        ]
        cmd += ["--config", args.config] if args.config else []
        cmd += ["--budget", args.budget] if args.budget else []
        for item in args.set:
            cmd += ["--set", item]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        for row in rows:
            print(json.dumps({"collection": name, **row}), flush=True)
        if done.returncode != 0:
            print(f"{name}: bench/quality.py exited {done.returncode}", file=sys.stderr)
        results[name] = rows
    print()
    print(suite_table(results))
    return results


if __name__ == "__main__":
    main()
