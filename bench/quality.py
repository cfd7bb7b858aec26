"""Quality benchmark: adapt the encoder to a BEIR folder's corpus and score it on its judgments.

Only the corpus feeds training (synthetic queries, LLM judgments, mined negatives); the
folder's own queries and qrels are used only to score BM25, the base and the fine-tuned
encoder. Prints one JSON line per system:

    {"system": "fine-tuned", "ndcg_cut_10": ..., "recall_100": ..., "map": ..., "recip_rank": ...,
     "queries": 52, "seconds": ...}

then ``rrf-base`` and ``rrf-fine-tuned``: BM25 fused with each encoder by reciprocal rank
fusion (k=60, top 100 of each), the bar a user has without training.
With no ``--config`` the run uses the ``--budget`` preset (default ``standard``).

``seconds`` is the search time for bm25/base and the whole adaptation (every asset) plus its
search for fine-tuned.

Usage::

    .venv/bin/python bench/quality.py ../shared/datasets/cacm
    .venv/bin/python bench/quality.py ../shared/datasets/cacm --set hard_negatives.relative_margin=null \\
        --set fine_tuned_encoder.loss=infonce --label no-margin

Ablations that share ``--home`` (default ``.forge-bench/<folder name>``) re-use the generation
cache and every unchanged artifact, so each one pays only for what it changes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's retriever_forge, not an installed one


def parse_value(text: str):
    return yaml.safe_load(text)


def training_facts(store, partition: str) -> dict:
    """What the fine-tuned encoder was trained on, read from this run's artifacts: training
    queries, each false-negative filter's drops, and the step whose weights were kept (0: no
    step beat the base model on the dev queries, so the base weights were published)."""
    import polars as pl

    candidates = store.read_table(store.read_pointer("hard_negatives", partition))
    drops = dict(candidates.group_by("dropped_by").len().iter_rows())
    examples = store.read_table(store.read_pointer("training_examples", partition))
    extra = (store.read_manifest(store.read_pointer("fine_tuned_encoder", partition)) or {}).get("extra", {})
    training = extra.get("training", {})
    return {
        "train_queries": examples.filter(pl.col("split") == "train").height,
        "dropped": {k: drops.get(k, 0) for k in ("margin", "judge", "guide")},
        "best_step": training.get("best_step"),
        "steps": training.get("steps"),
        "dev_gain": training.get("dev_gain"),
        "dev_gain_z": training.get("dev_gain_z"),
        "judge": {k: (extra.get("judge") or {}).get(k) for k in ("auc", "pairs", "used")},
    }


def rrf_rows(home: Path, partition: str, depth: int = 100) -> list[dict]:
    """RRF(BM25, base) and RRF(BM25, fine-tuned): reciprocal rank fusion (k=60, top 100 of
    each), the bar a user has without any training. Built from this run's artifacts; the corpus
    embeddings come from the run's embedding cache, so nothing is encoded twice."""
    import numpy as np

    from retriever_forge.artifacts import ArtifactStore
    from retriever_forge.evaluation import qrels_dict, score_run
    from retriever_forge.fusion import reciprocal_rank_fusion
    from retriever_forge.lexical import bm25_run
    from retriever_forge.orchestration.resources import ArtifactStoreResource, EncoderResource
    from retriever_forge.search import dense_run

    store = ArtifactStore(str(home))
    corpus = store.read_table(store.read_pointer("corpus", partition))
    queries = store.read_table(store.read_pointer("eval_queries", partition))
    qrels = qrels_dict(store.read_table(store.read_pointer("eval_qrels", partition)))
    resource, store_resource = EncoderResource(), ArtifactStoreResource()
    ids, texts, doc_ids = queries["query_id"].to_list(), queries["text"].to_list(), corpus["doc_id"].to_list()
    bm25 = bm25_run(corpus, queries, k=depth)
    rows = []
    for system, model in (
        ("rrf-base", None),
        ("rrf-fine-tuned", str(store.local_path(store.read_pointer("fine_tuned_encoder", partition)))),
    ):
        started = time.perf_counter()
        enc = resource.load(store_resource, model)
        emb = np.asarray(enc.encode_corpus(corpus))
        dense = dense_run(enc.encode_texts(texts), emb, ids, doc_ids, k=depth)
        per_query, agg = score_run(reciprocal_rank_fusion([bm25, dense], k=60, depth=depth), qrels)
        rows.append({"system": system, **agg, "queries": per_query.height, "seconds": round(time.perf_counter() - started, 1)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--home", help="artifact store / cache folder (default .forge-bench/<name>)")
    parser.add_argument("--config", help="base run-config YAML (e.g. configs/cacm.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="ASSET.FIELD=VALUE", help="config override (YAML value)")
    parser.add_argument(
        "--budget",
        choices=["quick", "standard", "thorough"],
        default=None,
        help="budget preset (default standard; retriever_forge/budget.py)",
    )
    parser.add_argument(
        "--on-bad-rows",
        choices=["error", "quarantine"],
        default="error",
        help="the dataset's policy for bad corpus/query rows (judgments naming a missing passage are always set aside)",
    )
    parser.add_argument("--label", default="", help="label added to each JSON line (for ablations)")
    args = parser.parse_args()

    folder = Path(args.folder).resolve()
    if not (folder / "corpus.jsonl").exists():
        print(f"{folder}: not a BEIR folder (no corpus.jsonl)", file=sys.stderr)
        return 2
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in folder.name)
    home = Path(args.home or Path(".forge-bench") / name).resolve()
    home.mkdir(parents=True, exist_ok=True)
    registry = Path(tempfile.mkdtemp()) / "datasets.yaml"
    registry.write_text(
        yaml.safe_dump({"datasets": {name: {"source": "beir", "path": str(folder), "split": args.split, "on_bad_rows": args.on_bad_rows}}})
    )
    # Both must be set before retriever_forge is imported: they fix the partitions and the store.
    os.environ["RETRIEVER_FORGE_DATASETS"] = str(registry)
    os.environ["RETRIEVER_FORGE_HOME"] = str(home)

    import dagster as dg

    from retriever_forge.orchestration.definitions import defs

    run_config = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    run_config.setdefault("ops", {})
    if args.budget:
        from retriever_forge.budget import with_budget

        with_budget(run_config, args.budget)
    for item in args.set:
        key, _, value = item.partition("=")
        asset, _, field = key.partition(".")
        run_config["ops"].setdefault(asset, {}).setdefault("config", {})[field] = parse_value(value)

    from retriever_forge.orchestration.assets.common import sync_dataset_partitions

    instance = dg.DagsterInstance.ephemeral()
    sync_dataset_partitions(instance)
    t0 = time.perf_counter()
    result = defs.resolve_job_def("adapt_retriever").execute_in_process(
        partition_key=name, run_config=run_config, instance=instance, raise_on_error=False
    )
    total = time.perf_counter() - t0
    if not result.success:
        print("pipeline failed; see the log above", file=sys.stderr)
        return 1
    from retriever_forge.artifacts import ArtifactStore

    store = ArtifactStore(str(home))
    board = store.read_scoreboard(name)
    training = training_facts(store, name)
    for row in board["systems"]:
        if row["judgments"] != "human":
            print(f"{folder}: no human judgments for split {args.split!r}; scores would be synthetic", file=sys.stderr)
            return 2
        seconds = total if row["system"] == "fine-tuned" else row["search_seconds"]
        line = {k: row[k] for k in ("system", "ndcg_cut_10", "recall_100", "map", "recip_rank", "queries")}
        line["seconds"] = round(seconds, 1)
        if row["system"] == "fine-tuned":
            line.update(training)
            line["published_weights"] = board.get("published_weights")
        if args.label:
            line["label"] = args.label
        print(json.dumps(line))
    for row in rrf_rows(home, name):
        line = {k: row[k] for k in ("system", "ndcg_cut_10", "recall_100", "map", "recip_rank", "queries", "seconds")}
        if args.label:
            line["label"] = args.label
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
