"""Stages 6–7: the FAISS index of the corpus under the fine-tuned encoder, and the scoreboard."""

import json
import tempfile
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from retriever_forge.artifacts import ArtifactRef, ArtifactStore
from retriever_forge.evaluation import qrels_dict, query_movers, score_systems, scoreboard_markdown, synthetic_eval_set
from retriever_forge.fusion import choose_fusion, fuse
from retriever_forge.indexing import IndexConfig, build_corpus_index, load_corpus_index, read_fusion, write_fusion
from retriever_forge.judging import judge_verdict
from retriever_forge.lexical import bm25_run
from retriever_forge.model_card import published_weights
from retriever_forge.orchestration.assets.common import (
    GPU_POOL,
    Check,
    artifact_model,
    artifact_output,
    stage_asset,
    stage_config,
    timed,
)
from retriever_forge.orchestration.resources import ArtifactStoreResource, EncoderResource
from retriever_forge.search import dense_run


class CorpusIndexConfig(stage_config(IndexConfig, ("index_type", "exact_max_docs"))):
    """The index (:class:`~retriever_forge.indexing.IndexConfig`) and the depth of its hybrid's fusion."""

    fusion_depth: int = Field(default=100, description="Hybrid: documents fused per query from BM25 and the dense run.")


class BenchmarkConfig(dg.Config):
    depth: int = Field(default=100, description="Documents retrieved per query.")
    max_regression: float = Field(default=0.02, description="Asset check: fine-tuned nDCG@10 may trail the base by at most this.")
    seed: int = Field(default=0, description="Seeds the randomization tests and bootstrap intervals of the scoreboard.")


@stage_asset("evaluation", pool=GPU_POOL, kinds={"faiss"})
def corpus_index(
    context: dg.AssetExecutionContext,
    config: CorpusIndexConfig,
    corpus: ArtifactRef,
    synthetic_queries: ArtifactRef,
    relevance_judgments: ArtifactRef,
    fine_tuned_encoder: ArtifactRef,
    artifact_store: ArtifactStoreResource,
    encoder: EncoderResource,
):
    """FAISS index of the corpus embedded by the fine-tuned encoder (index file + doc ids), with its hybrid.

    The hybrid fuses BM25 with the dense run; its method (RRF or a convex combination of
    normalised scores) and weight are chosen on the synthetic *dev* queries and stored with the
    index (``fusion.json``), for the fine-tuned encoder (``hybrid``) and the base (``hybrid-base``).
    """
    store = artifact_store.get_store()
    corpus_df = store.read_table(corpus)
    index = config.to_domain()
    with timed(context) as t:
        tuned = encoder.load(artifact_store, str(store.local_path(fine_tuned_encoder)))
        emb = tuned.encode_corpus(corpus_df)
        doc_ids = corpus_df["doc_id"].to_list()
        dev_queries, dev_qrels = synthetic_eval_set(store.read_table(synthetic_queries), store.read_table(relevance_judgments), split="dev")
        depth, texts, dev_ids = config.fusion_depth, dev_queries["text"].to_list(), dev_queries["query_id"].to_list()
        lexical = bm25_run(corpus_df, dev_queries, k=depth) if dev_queries.height else {}
        base = encoder.load(artifact_store)
        base_emb = base.encode_corpus(corpus_df)
        dense = {name: dense_run(enc.encode_queries(texts), np.asarray(e), dev_ids, doc_ids, k=depth) if texts else {}
                 for name, enc, e in (("hybrid", tuned, emb), ("hybrid-base", base, base_emb))}  # fmt: skip
        qrels = qrels_dict(dev_qrels)
        fusion = {name: choose_fusion(lexical, run, qrels, depth=depth) for name, run in dense.items()}
        fusion["hybrid"]["dense"], fusion["hybrid-base"]["dense"] = "fine_tuned_encoder", base.name
        with tempfile.TemporaryDirectory() as tmp:
            info = build_corpus_index(np.asarray(emb), doc_ids, Path(tmp), index_type=index.index_type, exact_max_docs=index.exact_max_docs)
            write_fusion(Path(tmp), fusion)
            ref = store.put_folder(tmp, "corpus_index", payload="index")
    return artifact_output(
        context, store, ref,
        upstream={"corpus": corpus, "synthetic_queries": synthetic_queries, "relevance_judgments": relevance_judgments,
                  "fine_tuned_encoder": fine_tuned_encoder},
        timing=t, rows=corpus_df.height, config=config.model_dump(),
        models={"encoder": artifact_model("fine_tuned_encoder", fine_tuned_encoder), "base_encoder": base.record()},
        metadata={"hybrid": dg.MetadataValue.md(_fusion_markdown(fusion)), "index_type": info["index_type"],
                  "dimension": info["dimension"], "vectors": info["vectors"], "fusion": dg.MetadataValue.json(fusion)},
    )  # fmt: skip


def _fusion_markdown(fusion: dict) -> str:
    lines = ["| system | method | parameters | dev queries | dev nDCG@10 of the choice |", "|---|---|---|---|---|"]
    for name, f in fusion.items():
        label = f"rrf(k={f['params']['k']})" if f["method"] == "rrf" else f"convex(w_bm25={f['params']['weights'][0]})"
        lines.append(f"| {name} (BM25 + {f['dense']}) | {f['method']} | `{json.dumps(f['params'])}` | {f['dev_queries']} "
                     f"| {f['dev_ndcg_cut_10'].get(label, float('nan')):.4f} |")  # fmt: skip
    return "\n".join(
        [*lines, "", "Chosen on the synthetic dev queries only (never the test qrels); stored with the index as `fusion.json`."]
    )


@stage_asset(
    "evaluation", pool=GPU_POOL, kinds={"polars"},
    checks=(Check("fine_tuned_not_worse", "Fine-tuned nDCG@10 is not below the base encoder's by more than max_regression."),),
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
    dataset = context.partition_key
    store = artifact_store.get_store()
    corpus_df = store.read_table(corpus)
    queries, qrels = store.read_table(eval_queries), store.read_table(eval_qrels)
    judged_by = "human"
    if qrels.height == 0:
        judged_by = "synthetic"
        queries, qrels = synthetic_eval_set(store.read_table(synthetic_queries), store.read_table(relevance_judgments))
    if queries.height == 0:
        raise dg.Failure(f"dataset {dataset!r}: no evaluation queries (no human qrels and no held-out synthetic queries)")
    qrels_by_query = qrels_dict(qrels)
    query_ids, query_texts = queries["query_id"].to_list(), queries["text"].to_list()
    doc_ids = corpus_df["doc_id"].to_list()
    with timed(context) as t:
        runs, seconds = {}, {}
        with timed() as ts:
            runs["bm25"] = bm25_run(corpus_df, queries, k=config.depth)
        seconds["bm25"] = ts["seconds"]
        with timed() as ts:
            base = encoder.load(artifact_store)
            runs["base"] = dense_run(
                base.encode_queries(query_texts), np.asarray(base.encode_corpus(corpus_df)), query_ids, doc_ids, k=config.depth
            )
        seconds["base"] = ts["seconds"]
        index_dir = store.local_path(corpus_index)
        fusion = read_fusion(index_dir)
        if "hybrid-base" in fusion:
            with timed() as ts:
                runs["hybrid-base"] = fuse(
                    [runs["bm25"], runs["base"]], fusion["hybrid-base"]["method"], fusion["hybrid-base"]["params"], config.depth
                )
            seconds["hybrid-base"] = round(seconds["bm25"] + seconds["base"] + ts["seconds"], 2)
        with timed() as ts:
            tuned = encoder.load(artifact_store, str(store.local_path(fine_tuned_encoder)))
            index = load_corpus_index(index_dir)
            runs["fine-tuned"] = dense_run(tuned.encode_queries(query_texts), index.index, query_ids, index.doc_ids, k=config.depth)
        seconds["fine-tuned"] = ts["seconds"]
        if "hybrid" in fusion:
            with timed() as ts:
                runs["hybrid"] = fuse(
                    [runs["bm25"], runs["fine-tuned"]], fusion["hybrid"]["method"], fusion["hybrid"]["params"], config.depth
                )
            seconds["hybrid"] = round(seconds["bm25"] + seconds["fine-tuned"] + ts["seconds"], 2)
        table, rows = score_systems(runs, qrels_by_query, seed=config.seed)
        for row in rows:
            row.update(judgments=judged_by, search_seconds=seconds[row["system"]])
            if row["system"] in fusion:
                row["fusion"] = {k: fusion[row["system"]][k] for k in ("method", "params", "chosen_on", "dev_queries")}
        kept_base = published_weights(store, fine_tuned_encoder) == "base"
        for row in rows:
            if row["system"] in ("fine-tuned", "hybrid"):
                row["kept_base_weights"] = kept_base
        movers = query_movers(table, runs, qrels_by_query, dict(zip(query_ids, query_texts, strict=True)))
        ref = store.put_table(table, "benchmark_scores")
    judge = {k: v for k, v in judge_verdict(store, relevance_judgments).items() if k in ("auc", "pairs", "used")}
    weights = published_weights(store, fine_tuned_encoder)
    markdown = scoreboard_markdown(rows, judged_by) + "\n\n" + scoreboard_notes(judge, weights)
    scoreboard_path = _write_scoreboard(store, dataset, rows, markdown, ref, movers,
                                        extra={"judge": judge, "published_weights": weights})  # fmt: skip
    by_system = {r["system"]: r for r in rows}
    yield artifact_output(
        context, store, ref,
        upstream={"corpus": corpus, "eval_queries": eval_queries, "eval_qrels": eval_qrels, "synthetic_queries": synthetic_queries,
                  "relevance_judgments": relevance_judgments, "fine_tuned_encoder": fine_tuned_encoder, "corpus_index": corpus_index},
        timing=t, rows=table.height, config=config.model_dump(),
        models={"base_encoder": base.record(), "fine_tuned_encoder": artifact_model("fine_tuned_encoder", fine_tuned_encoder)},
        metadata={"scoreboard": dg.MetadataValue.md(markdown), "queries_moved": dg.MetadataValue.md(_movers_markdown(movers)),
                  "per_query_delta": dg.MetadataValue.md(_delta_chart(table)), "judgments": judged_by,
                  "published_weights": weights, "kept_base_weights": kept_base, "judge": dg.MetadataValue.json(judge),
                  "scoreboard_file": dg.MetadataValue.path(scoreboard_path),
                  **{f"ndcg_cut_10/{s}": r["ndcg_cut_10"] for s, r in by_system.items()}},
        with_trace=True,
    )  # fmt: skip
    delta = by_system["fine-tuned"]["ndcg_cut_10"] - by_system["base"]["ndcg_cut_10"]
    check_md = {"ndcg_cut_10_delta": round(delta, 4), "judgments": judged_by, "kept_base_weights": kept_base}
    if kept_base:  # delta 0 by construction: not evidence that fine-tuning worked
        check_md["note"] = "training kept the base weights: the fine-tuned model is the base model, so this delta says nothing"
    yield dg.AssetCheckResult(
        check_name="fine_tuned_not_worse",
        passed=bool(delta >= -config.max_regression) and not kept_base,
        severity=dg.AssetCheckSeverity.WARN, metadata=check_md,
    )  # fmt: skip


def scoreboard_notes(judge: dict, weights: str) -> str:
    """What a reader needs beside the scores: whose weights were published and whether the judge steered training."""
    lines = [
        f"Published weights: **{weights}**" + (" (no training step beat the base model on dev beyond noise)." if weights == "base" else ".")
    ]
    if judge.get("pairs"):
        verdict = "used" if judge["used"] else "**not used** (below threshold: judge filter and graded loss off)"
        lines.append(f"Judge self-check: ROC AUC {judge['auc']} on {judge['pairs']} calibration pairs; {verdict}.")
    return "\n".join(lines)


def _delta_chart(table) -> str:
    from retriever_forge.charts import bar_chart, markdown_image

    tuned = table.filter(system="fine-tuned").select("query_id", "ndcg_cut_10")
    base = table.filter(system="base").select("query_id", pl.col("ndcg_cut_10").alias("base"))
    d = tuned.join(base, on="query_id").with_columns((pl.col("ndcg_cut_10") - pl.col("base")).alias("delta")).sort("delta", descending=True)
    png = bar_chart(d["query_id"].to_list(), d["delta"].to_list(), title="per-query nDCG@10: fine-tuned - base (sorted)",
                    ylabel="delta", signed=True)  # fmt: skip
    return markdown_image(png, "per-query nDCG@10 delta, fine-tuned vs base")


def _movers_markdown(movers: dict) -> str:
    sys, ref = movers["system"], movers["reference"]
    lines = [f"| | query | Δ nDCG@10 | best relevant rank ({ref} → {sys}) |", "|---|---|---|---|"]
    for label in ("gained", "lost"):
        for m in movers[label]:
            ranks = m["best_relevant_rank"]
            text = m["text"].replace("|", "\\|")[:100]
            lines.append(f"| {label} | `{m['query_id']}` {text} | {m['delta']:+.3f} | {ranks[ref] or '>100'} → {ranks[sys] or '>100'} |")
    return "\n".join(lines) if len(lines) > 2 else f"No query moved between {ref} and {sys}."


def _write_scoreboard(store: ArtifactStore, dataset: str, rows: list[dict], markdown: str, ref: ArtifactRef,
                      movers: dict, extra: dict | None = None) -> str:  # fmt: skip
    """A human-findable copy of the latest scoreboard per dataset (the artifact itself is immutable),
    in the artifact store beside the artifacts; returns the Markdown copy's URL."""
    store.write_text(store.scoreboard_path(dataset, "md"),
                     f"# {dataset}\n\n{markdown}\n\n## Queries that moved most\n\n{_movers_markdown(movers)}\n\nArtifact: `{ref.hash}`\n")  # fmt: skip
    board = {"dataset": dataset, "artifact_hash": ref.hash, "systems": rows, "movers": movers,
             "tests": "delta: mean per-query nDCG@10 (system - reference); p_value: two-sided Fisher randomization (sign flip, seeded); "
                      "p_value_t: paired t-test; p_value_holm: Holm over the board's distinct pairs; ci95: percentile bootstrap",
             **(extra or {})}  # fmt: skip
    store.write_text(store.scoreboard_path(dataset, "json"), json.dumps(board, indent=1))
    return store.url(store.scoreboard_path(dataset, "md"))
