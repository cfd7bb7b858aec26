"""Stages 6–7: the FAISS index of the corpus under the fine-tuned encoder, and the scoreboard."""


import json
import tempfile
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from retriever_forge.artifacts import ArtifactRef, ArtifactStore
from retriever_forge.assets.common import CODE_VERSION, GPU_POOL, dataset_partitions, dataset_spec, effective_config, publish, timed
from retriever_forge.assets.generation import _corpus_embeddings
from retriever_forge.assets.training import judge_verdict
from retriever_forge.encoding import encode_queries
from retriever_forge.evaluation import MEASURES, bm25_run, dense_run, qrels_dict, score_run, scoreboard_markdown
from retriever_forge.indexing import build_corpus_index, load_corpus_index, search_corpus_index
from retriever_forge.judging import steering_judgments
from retriever_forge.resources import ArtifactStoreResource, EncoderResource


class CorpusIndexConfig(dg.Config):
    index_type: str = Field(default="auto", description="flat | hnsw | ivf | auto (flat below exact_max_docs).")
    exact_max_docs: int = Field(default=200_000, description="auto: largest corpus indexed exactly.")


class BenchmarkConfig(dg.Config):
    depth: int = Field(default=100, description="Documents retrieved per query.")
    max_regression: float = Field(default=0.02, description="Asset check: fine-tuned nDCG@10 may trail the base by at most this.")


@dg.asset(
    partitions_def=dataset_partitions,
    group_name="evaluation",
    io_manager_key="artifact_io",
    code_version=CODE_VERSION,
    pool=GPU_POOL,
    kinds={"faiss"},
)
def corpus_index(
    context: dg.AssetExecutionContext,
    config: CorpusIndexConfig,
    corpus: ArtifactRef,
    fine_tuned_encoder: ArtifactRef,
    artifact_store: ArtifactStoreResource,
    encoder: EncoderResource,
):
    """FAISS index of the corpus embedded by the fine-tuned encoder (index file + doc ids)."""
    values = effective_config(config, dataset_spec(context), "corpus_index", context)
    store = artifact_store.get_store()
    corpus_df = store.read_table(corpus)
    with timed(context) as t:
        tuned = encoder.load(str(store.local_path(fine_tuned_encoder)))
        emb = _corpus_embeddings(tuned, corpus_df, artifact_store.scratch("embeddings"), encoder.batch_size)
        with tempfile.TemporaryDirectory() as tmp:
            info = build_corpus_index(np.asarray(emb), corpus_df["doc_id"].to_list(), Path(tmp),
                                      index_type=values["index_type"], exact_max_docs=values["exact_max_docs"])  # fmt: skip
            ref = store.put_folder(tmp, "corpus_index", payload="index")
    return publish(
        context, store, ref, asset="corpus_index", upstream={"corpus": corpus, "fine_tuned_encoder": fine_tuned_encoder},
        timing=t, rows=corpus_df.height, config=values,
        models={"encoder": {"id": "fine_tuned_encoder", "weights_hash": fine_tuned_encoder.hash}},
        metadata={"index_type": info["index_type"], "dimension": info["dimension"], "vectors": info["vectors"]},
    )  # fmt: skip


def synthetic_eval_set(queries: pl.DataFrame, judgments: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Held-out synthetic queries and LLM pseudo-qrels, for corpora without human judgments.

    The source passage counts as relevant (grade at least 1, as in InPars/GPL; 1 where the judge
    did not grade it, e.g. a judge that failed its self-check); retrieved candidates count when
    the judge graded them 2 or 3.
    """
    # LLM queries only: a corpus crop (style "crop") is a copy of its passage, no test of retrieval.
    test = queries.filter(pl.col("dropped_by").is_null() & (pl.col("split") == "test") & (pl.col("style") != "crop"))
    j = steering_judgments(judgments).filter(pl.col("query_id").is_in(test["query_id"].implode()))
    source_grade = j.filter(pl.col("pair_type") == "source").select("query_id", "doc_id", "grade").unique(["query_id", "doc_id"])
    sources = test.select("query_id", "doc_id").join(source_grade, on=["query_id", "doc_id"], how="left")
    qrels = pl.concat([
        sources.select("query_id", "doc_id", pl.max_horizontal(pl.col("grade").fill_null(1), pl.lit(1)).alias("relevance")),
        j.filter((pl.col("pair_type") == "candidate") & (pl.col("grade") >= 2)).select("query_id", "doc_id", pl.col("grade").alias("relevance")),
    ]).unique(["query_id", "doc_id"], keep="first").cast({"relevance": pl.Int64})  # fmt: skip
    return test.select("query_id", "text"), qrels


def published_weights(store, fine_tuned_encoder: ArtifactRef) -> str:
    """``base`` when no training step beat the base model on dev (its weights were published),
    else ``fine-tuned (step N of M)``."""
    training = ((store.read_manifest(fine_tuned_encoder) or {}).get("extra") or {}).get("training") or {}
    if training.get("best_step") == 0:
        return "base"
    return f"fine-tuned (step {training.get('best_step')} of {training.get('steps')})"


@dg.asset(
    partitions_def=dataset_partitions,
    group_name="evaluation",
    io_manager_key="artifact_io",
    code_version=CODE_VERSION,
    pool=GPU_POOL,
    kinds={"polars"},
    check_specs=[
        dg.AssetCheckSpec("fine_tuned_not_worse", asset="benchmark_scores",
                          description="Fine-tuned nDCG@10 is not below the base encoder's by more than max_regression."),
    ],
)  # fmt: skip
def benchmark_scores(
    context: dg.AssetExecutionContext,
    config: BenchmarkConfig,
    corpus: ArtifactRef,
    eval_queries: ArtifactRef,
    eval_qrels: ArtifactRef,
    synthetic_queries: ArtifactRef,
    relevance_judgments: ArtifactRef,
    fine_tuned_encoder: ArtifactRef,
    corpus_index: ArtifactRef,
    artifact_store: ArtifactStoreResource,
    encoder: EncoderResource,
):
    """nDCG@10, Recall@100, MAP and MRR (pytrec_eval) for BM25, the base and the fine-tuned encoder."""
    spec = dataset_spec(context)
    values = effective_config(config, spec, "benchmark_scores", context)
    store = artifact_store.get_store()
    corpus_df = store.read_table(corpus)
    queries, qrels = store.read_table(eval_queries), store.read_table(eval_qrels)
    judged_by = "human"
    if qrels.height == 0:
        judged_by = "synthetic"
        queries, qrels = synthetic_eval_set(store.read_table(synthetic_queries), store.read_table(relevance_judgments))
    if queries.height == 0:
        raise dg.Failure(f"dataset {spec.name!r}: no evaluation queries (no human qrels and no held-out synthetic queries)")
    qrels_by_query = qrels_dict(qrels)
    query_ids, query_texts = queries["query_id"].to_list(), queries["text"].to_list()
    doc_ids = corpus_df["doc_id"].to_list()
    with timed(context) as t:
        runs, seconds = {}, {}
        with timed() as ts:
            runs["bm25"] = bm25_run(corpus_df, queries, k=values["depth"])
        seconds["bm25"] = ts["seconds"]
        with timed() as ts:
            base = encoder.load()
            base_corpus = _corpus_embeddings(base, corpus_df, artifact_store.scratch("embeddings"), encoder.batch_size)
            runs["base"] = dense_run(encode_queries(base, query_texts), np.asarray(base_corpus), query_ids, doc_ids, k=values["depth"])
        seconds["base"] = ts["seconds"]
        with timed() as ts:
            tuned = encoder.load(str(store.local_path(fine_tuned_encoder)))
            index = load_corpus_index(store.local_path(corpus_index))
            runs["fine-tuned"] = search_corpus_index(index, encode_queries(tuned, query_texts), query_ids, k=values["depth"])
        seconds["fine-tuned"] = ts["seconds"]
        per_query, rows = [], []
        for system, run in runs.items():
            pq, agg = score_run(run, qrels_by_query)
            per_query.append(pq.with_columns(pl.lit(system).alias("system")))
            rows.append({"system": system, **agg, "queries": pq.height, "judgments": judged_by, "search_seconds": seconds[system]})
        table = pl.concat(per_query).select("system", "query_id", *MEASURES)
        ref = store.put_table(table, "benchmark_scores")
    judge = {k: v for k, v in judge_verdict(store, relevance_judgments).items() if k in ("auc", "pairs", "used")}
    weights = published_weights(store, fine_tuned_encoder)
    markdown = scoreboard_markdown(rows, judged_by) + "\n\n" + scoreboard_notes(judge, weights)
    scoreboard_path = _write_scoreboard(store, spec.name, rows, markdown, ref, extra={"judge": judge, "published_weights": weights})
    by_system = {r["system"]: r for r in rows}
    yield publish(
        context, store, ref, asset="benchmark_scores",
        upstream={"corpus": corpus, "eval_queries": eval_queries, "eval_qrels": eval_qrels, "synthetic_queries": synthetic_queries,
                  "relevance_judgments": relevance_judgments, "fine_tuned_encoder": fine_tuned_encoder, "corpus_index": corpus_index},
        timing=t, rows=table.height, config=values,
        models={"base_encoder": {"id": base.name, "weights_hash": base.weights_hash},
                "fine_tuned_encoder": {"id": "fine_tuned_encoder", "weights_hash": fine_tuned_encoder.hash}},
        metadata={"scoreboard": dg.MetadataValue.md(markdown), "judgments": judged_by,
                  "judge": dg.MetadataValue.json(judge), "published_weights": weights,
                  "scoreboard_file": dg.MetadataValue.path(scoreboard_path),
                  **{f"ndcg_cut_10/{s}": r["ndcg_cut_10"] for s, r in by_system.items()}},
        with_trace=True,
    )  # fmt: skip
    delta = by_system["fine-tuned"]["ndcg_cut_10"] - by_system["base"]["ndcg_cut_10"]
    yield dg.AssetCheckResult(
        check_name="fine_tuned_not_worse", asset_key="benchmark_scores", passed=bool(delta >= -values["max_regression"]),
        severity=dg.AssetCheckSeverity.WARN, metadata={"ndcg_cut_10_delta": round(delta, 4), "judgments": judged_by},
    )  # fmt: skip


def scoreboard_notes(judge: dict, weights: str) -> str:
    """What a reader needs beside the scores: whose weights were published and whether the judge steered training."""
    lines = [f"Published weights: **{weights}**" + (" (no training step beat the base model on dev beyond noise)." if weights == "base" else ".")]
    if judge.get("pairs"):
        verdict = "used" if judge["used"] else "**not used** (below threshold: judge filter and graded loss off)"
        lines.append(f"Judge self-check: ROC AUC {judge['auc']} on {judge['pairs']} calibration pairs; {verdict}.")
    return "\n".join(lines)


def _write_scoreboard(store: ArtifactStore, dataset: str, rows: list[dict], markdown: str, ref: ArtifactRef, extra: dict | None = None) -> str:
    """A human-findable copy of the latest scoreboard per dataset (the artifact itself is immutable),
    in the artifact store beside the artifacts; returns the Markdown copy's URL."""
    store.write_text(store.scoreboard_path(dataset, "md"), f"# {dataset}\n\n{markdown}\n\nArtifact: `{ref.hash}`\n")
    record = {"dataset": dataset, "artifact_hash": ref.hash, "systems": rows, **(extra or {})}
    store.write_text(store.scoreboard_path(dataset, "json"), json.dumps(record, indent=1))
    return store.url(store.scoreboard_path(dataset, "md"))
