"""Does the dev signal track the benchmark? Every training checkpoint of a run, scored on both.

The publication guard keeps a step's weights only if its dev MRR@10 gain over the base is beyond
noise. This scores the checkpoints a run left on disk (``work/training/<dataset>/*/checkpoints``)
on the held-out benchmark queries too: the synthetic test split for a corpus without human
judgments, else the human-judged queries. A guard is only as good as the agreement of the two
columns.

    .venv/bin/python bench/checkpoints.py /tmp/demo-home demo

Prints one JSON line per checkpoint, then a Markdown table: step, dev MRR@10 (and its gain and z
over the base, as training recorded them), benchmark nDCG@10 and its gain over the base.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl

from retriever_forge.artifacts import ArtifactStore
from retriever_forge.checkpoints import list_checkpoints, load_weights, read_state
from retriever_forge.datasets import passage_text_expr
from retriever_forge.encoding import encode_with_model, open_sentence_transformer, resolve_model_path
from retriever_forge.evaluation import qrels_dict, score_run, synthetic_eval_set
from retriever_forge.search import dense_run


def latest(store: ArtifactStore, asset: str, dataset: str) -> pl.DataFrame:
    """The table of ``asset``'s latest materialization for ``dataset``."""
    return store.read_table(store.read_pointer(asset, dataset))


def benchmark_set(store: ArtifactStore, dataset: str) -> tuple[pl.DataFrame, dict]:
    """The benchmark's queries and qrels: human judgments when the dataset has them, else the synthetic test split."""
    qrels = latest(store, "eval_qrels", dataset)
    if qrels.height:
        return latest(store, "eval_queries", dataset).select("query_id", "text"), qrels_dict(qrels)
    queries, synthetic = synthetic_eval_set(latest(store, "synthetic_queries", dataset), latest(store, "relevance_judgments", dataset))
    return queries, qrels_dict(synthetic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("home", type=Path, help="RETRIEVER_FORGE_HOME of a finished run")
    ap.add_argument("dataset")
    ap.add_argument("--base", default="all-MiniLM-L6-v2")
    args = ap.parse_args()
    store = ArtifactStore(args.home)
    corpus = latest(store, "corpus", args.dataset).select(pl.col("doc_id").cast(pl.String), text=passage_text_expr())
    queries, qrels = benchmark_set(store, args.dataset)
    model = open_sentence_transformer(resolve_model_path(args.base))
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    doc_ids, texts, qids = corpus["doc_id"].to_list(), corpus["text"].to_list(), queries["query_id"].to_list()

    def ndcg() -> float:
        docs = encode_with_model(model, texts, batch_size=64, show_progress=False)
        q = encode_with_model(model, queries["text"].to_list(), batch_size=64, show_progress=False)
        return score_run(dense_run(q, docs, qids, doc_ids, k=100), qrels)[1]["ndcg_cut_10"]

    rows = [{"run": "-", "step": 0, "dev_mrr@10": None, "dev_gain": None, "dev_gain_z": None, "ndcg_cut_10": ndcg()}]
    base_ndcg = rows[0]["ndcg_cut_10"]
    for root in sorted((args.home / "work" / "training" / args.dataset).glob("*/checkpoints")):
        for step, path in list_checkpoints(root):
            state = read_state(path)
            dev = next((d for d in state.get("dev_metrics", []) if d["step"] == step), {})
            model.load_state_dict(base_state)
            load_weights(model, path / "weights.safetensors")
            row = {"run": root.parent.name, "step": step, "dev_mrr@10": dev.get("mrr@10"), "dev_gain": dev.get("gain"),
                   "dev_gain_z": dev.get("gain_z"), "ndcg_cut_10": ndcg()}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{len(qids)} benchmark queries, {len(doc_ids)} passages; base nDCG@10 {base_ndcg:.4f}\n")
    print("| run | step | dev MRR@10 | dev gain (z) | nDCG@10 | vs base |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        dev = "–" if r["dev_gain"] is None else f"{r['dev_gain']:+.3f} ({r['dev_gain_z']:.1f})"
        mrr = "–" if r["dev_mrr@10"] is None else f"{r['dev_mrr@10']:.3f}"
        print(f"| {r['run']} | {r['step']} | {mrr} | {dev} | {r['ndcg_cut_10']:.4f} | {r['ndcg_cut_10'] - base_ndcg:+.4f} |")


if __name__ == "__main__":
    sys.exit(main())
