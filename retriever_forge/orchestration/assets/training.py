"""Stages 4–5: hard negatives (with false-negative filters), training examples, fine-tuning."""

import dataclasses
import math

import dagster as dg
import polars as pl
from pydantic import Field

from retriever_forge.artifacts import ArtifactRef
from retriever_forge.datasets import passage_text, passage_text_expr
from retriever_forge.hashing import hash_file, hash_json
from retriever_forge.judging import judge_verdict, steering_judgments
from retriever_forge.mining import MiningConfig, build_training_examples, mine_hard_negatives
from retriever_forge.model_card import training_card_facts, write_model_card
from retriever_forge.orchestration.assets.common import (
    GPU_POOL,
    Check,
    artifact_model,
    artifact_output,
    log_progress,
    markdown_table,
    stage_asset,
    stage_config,
    timed,
)
from retriever_forge.orchestration.resources import ArtifactStoreResource, EncoderResource
from retriever_forge.training import TrainingConfig, loss_trend, train_encoder


class HardNegativesConfig(stage_config(MiningConfig, (
    "rank_start", "rank_end", "negatives_per_query", "relative_margin", "absolute_margin", "judge_threshold", "judge_margin",
    "bm25_candidates", "seed"))):  # fmt: skip
    """Mining (:class:`~retriever_forge.mining.MiningConfig`); ``use_guide`` follows ``guide_model``."""

    guide_model: str | None = Field(default=None, description="GISTEmbed guide encoder (null: off).")


class TrainingExamplesConfig(dg.Config):
    positive_grade: float | None = Field(
        default=3.0,
        description="Grade of each query's source passage for the graded loss (3: the level it was written for; null: the judge's grade).",
    )


class FineTuneConfig(stage_config(TrainingConfig, (
    "epochs", "min_steps", "max_epochs", "learning_rate", "batch_size", "temperature", "loss", "graded_weight", "negatives_per_example", "max_seq_length",
    "topic_batches", "early_stopping_patience", "min_dev_gain_z", "dev_distractors", "bf16", "seed", "grad_cache_chunk_size", "gradient_checkpointing",
    "adapter", "lora_rank", "lora_alpha", "lora_dropout", "target_modules", "tunable_parameter_budget", "pooling",
    "latent_attention_latents", "latent_attention_heads", "bidirectional", "query_instruction"), budget=True)):  # fmt: skip
    """Fine-tuning (:class:`~retriever_forge.training.TrainingConfig`); the graded loss is off when the judge failed its self-check."""


def _kept(store, ref) -> pl.DataFrame:
    return store.read_table(ref).filter(pl.col("dropped_by").is_null())


def filter_decisions_markdown(decisions: dict[str, int]) -> str:
    """Counts per mining filter outcome, each with what it means."""
    from retriever_forge.samples import NEGATIVE_FILTERS

    lines = ["| outcome | candidates | meaning |", "|---|---|---|"]
    for name, n in sorted(decisions.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {n} | {NEGATIVE_FILTERS.get(None if name == 'kept' else name, '')} |")
    return "\n".join(lines)


def negatives_sample_markdown(candidates: pl.DataFrame, queries: pl.DataFrame, corpus: pl.DataFrame, seed: int) -> str:
    """Three mined candidates per filter outcome: the query, the candidate passage, its rank, scores and the reason."""
    from retriever_forge.samples import NEGATIVE_FILTERS, snippet, stratified_sample

    sample = stratified_sample(candidates, ["dropped_by"], per_group=3, seed=seed)
    sample = sample.join(queries.select("query_id", pl.col("text").alias("query")), on="query_id", how="left")
    sample = sample.join(corpus.select("doc_id", pl.col("text").alias("passage")), on="doc_id", how="left")
    rows = pl.DataFrame({
        "decision": [f"{d or 'kept'}: {NEGATIVE_FILTERS.get(d, '')}" for d in sample["dropped_by"]],
        "query": sample["query"], "rank": sample["rank"], "score": sample["score"].round(3),
        "positive_score": sample["positive_score"].round(3), "judged": sample["judged_grade"].round(2),
        "candidate": [snippet(p, 120) for p in sample["passage"]],
    })  # fmt: skip
    return markdown_table(rows, max_rows=30, max_chars=200)


@stage_asset("training", pool=GPU_POOL, kinds={"faiss", "polars"})
def hard_negatives(
    context: dg.AssetExecutionContext,
    config: HardNegativesConfig,
    corpus: ArtifactRef,
    synthetic_queries: ArtifactRef,
    relevance_judgments: ArtifactRef,
    artifact_store: ArtifactStoreResource,
    encoder: EncoderResource,
):
    """Candidates from the base encoder + FAISS, each with the filter that dropped it (if any)."""
    mining = config.to_domain(use_guide=config.guide_model is not None)
    store = artifact_store.get_store()
    corpus_df = store.read_table(corpus)
    queries = _kept(store, synthetic_queries).filter(pl.col("split").is_in(["train", "dev"]))
    # Only the judgments that may steer training: none when the judge failed its self-check.
    judgments = steering_judgments(store.read_table(relevance_judgments))
    texts = queries["text"].to_list()
    with timed(context) as t:
        base = encoder.load(artifact_store)
        corpus_emb, query_emb = base.encode_corpus(corpus_df), base.encode_texts(texts)
        guide = encoder.load(artifact_store, config.guide_model) if config.guide_model else None
        bm25_texts = (
            [passage_text(a, b) for a, b in zip(corpus_df["title"], corpus_df["text"], strict=True)] if mining.bm25_candidates else None
        )
        candidates = mine_hard_negatives(
            query_emb, corpus_emb, queries["query_id"].to_list(), queries["doc_id"].to_list(), corpus_df["doc_id"].to_list(),
            mining, judgments=judgments.select("query_id", "doc_id", "expected_grade"),
            guide=(guide.encode_texts(texts), guide.encode_corpus(corpus_df)) if guide else None,
            bm25=(bm25_texts, texts) if bm25_texts else None,
        )  # fmt: skip
        ref = store.put_table(candidates, "hard_negatives")
    reasons = candidates.group_by("dropped_by").len().sort("dropped_by")
    decisions = {str(r["dropped_by"] or "kept"): r["len"] for r in reasons.iter_rows(named=True)}
    models = {"mining_encoder": base.record()}
    if guide:
        models["guide_encoder"] = guide.record()
    return artifact_output(
        context, store, ref,
        upstream={"corpus": corpus, "synthetic_queries": synthetic_queries, "relevance_judgments": relevance_judgments},
        timing=t, rows=candidates.height, config=config.model_dump(), models=models, seeds={"seed": config.seed},
        metadata={"negatives_sample": dg.MetadataValue.md(negatives_sample_markdown(candidates, queries, corpus_df, config.seed)),
                  "filter_decisions": dg.MetadataValue.md(filter_decisions_markdown(decisions)), "queries": queries.height,
                  "judge_used": judge_verdict(store, relevance_judgments)["used"]},
    )  # fmt: skip


@stage_asset("training", kinds={"polars"},
             checks=(Check("examples_valid", "Non-empty; no positive appears among its own negatives.", blocking=True),))  # fmt: skip
def training_examples(
    context: dg.AssetExecutionContext,
    config: TrainingExamplesConfig,
    corpus: ArtifactRef,
    synthetic_queries: ArtifactRef,
    relevance_judgments: ArtifactRef,
    hard_negatives: ArtifactRef,
    artifact_store: ArtifactStoreResource,
):
    """(query, positive, negatives, grades) rows, each keeping mining ranks and scores."""
    store = artifact_store.get_store()
    with timed(context) as t:
        queries = _kept(store, synthetic_queries).filter(pl.col("split").is_in(["train", "dev"]))
        examples = build_training_examples(
            queries, store.read_table(corpus), store.read_table(hard_negatives), steering_judgments(store.read_table(relevance_judgments)),
            positive_grade=config.positive_grade,
        )  # fmt: skip
        ref = store.put_table(examples, "training_examples")
    leaks = examples.filter(pl.col("negative_ids").list.contains(pl.col("positive_id"))).height
    splits = {r["split"]: r["len"] for r in examples.group_by("split").len().sort("split").iter_rows(named=True)}
    yield artifact_output(
        context, store, ref,
        upstream={"corpus": corpus, "synthetic_queries": synthetic_queries, "relevance_judgments": relevance_judgments,
                  "hard_negatives": hard_negatives},
        timing=t, rows=examples.height, config=config.model_dump(), extra={"judge": judge_verdict(store, relevance_judgments)},
        metadata={"splits": dg.MetadataValue.json(splits),
                  "mean_negatives": round(float(examples["negative_ids"].list.len().mean() or 0), 2),
                  "preview": dg.MetadataValue.md(markdown_table(examples.select("query", "positive_text", "negative_texts"), 3))},
    )  # fmt: skip
    yield dg.AssetCheckResult(
        check_name="examples_valid",
        passed=splits.get("train", 0) > 0 and leaks == 0, metadata={"rows": examples.height, "positive_in_negatives": leaks},
    )  # fmt: skip


@stage_asset(
    "training", pool=GPU_POOL, kinds={"pytorch", "safetensors"},
    checks=(Check("training_loss_finite", "Every logged loss is finite (a NaN/inf model never reaches the index).", blocking=True),
            Check("training_loss_decreasing", "Smoothed loss falls over training (checked from 50 steps on; per-batch loss is noise before).")),
)  # fmt: skip
def fine_tuned_encoder(
    context: dg.AssetExecutionContext,
    config: FineTuneConfig,
    corpus: ArtifactRef,
    training_examples: ArtifactRef,
    artifact_store: ArtifactStoreResource,
    encoder: EncoderResource,
):
    """The base encoder fine-tuned on the training examples; a sentence-transformers folder (safetensors).

    Dev queries are ranked against the corpus (a sample of ``dev_distractors`` passages), as the benchmark ranks them."""
    store = artifact_store.get_store()
    examples = store.read_table(training_examples)
    dev_corpus = store.read_table(corpus).select(pl.col("doc_id").cast(pl.String), text=passage_text_expr())
    # A judge that failed its self-check must not steer the loss: its grades would be noise.
    judge = judge_verdict(store, training_examples)
    loss = config.loss
    if not judge["used"] and "graded" in loss:
        context.log.warning(f"judge not used (self-check ROC AUC {judge['auc']}): loss {loss!r} -> 'infonce'")
        loss = "infonce"
    tc = config.to_domain(loss=loss)
    with timed(context) as t:
        base = encoder.load(artifact_store)
        # The work folder is keyed by everything that determines the result, so a resumed run
        # continues from its own checkpoints and never from another configuration's.
        run_key = hash_json(
            {"examples": training_examples.hash, "corpus": corpus.hash, "base": base.encoder.weights_hash, "config": dataclasses.asdict(tc)}
        )[:16]
        out_dir = artifact_store.scratch("training", context.partition_key, run_key)
        result = train_encoder(base.encoder.path, examples, out_dir, tc, progress=log_progress(context), resume=True, dev_corpus=dev_corpus)
        card_facts = training_card_facts(store, training_examples, examples, base_model=base.name, base_weights_hash=base.encoder.weights_hash,
                                         dataset=context.partition_key, config=tc, result=result)  # fmt: skip
        card = write_model_card(result.model_dir, card_facts)
        ref = store.put_folder(result.model_dir, "fine_tuned_encoder")
    artifact_store.throughput_log().record("train_examples_per_s", result.examples_seen, result.seconds, encoder.model)
    losses = [h["loss"] for h in result.history]
    finite = all(math.isfinite(x) for x in losses)
    trend = loss_trend(losses)
    # Which step's weights were published (0: no step beat the base model on the dev queries,
    # so these are the base weights), and why training stopped: in the manifest and the UI.
    kept_base = result.best_step == 0 and bool(result.dev_metrics)
    if kept_base:
        context.log.warning(KEPT_BASE_SENTENCE.replace("**", ""))
    training = {
        "kept_base_weights": kept_base,
        "best_step": result.best_step,
        "steps": len(losses),
        "stop_reason": result.stop_reason,
        "device": result.device,
        "precision": result.precision,
        "model_card_hash": hash_file(card),
        "loss": tc.loss,
        "judge_used": judge["used"],
        "trainable_parameters": result.trainable_parameters,
        "adapter": result.adapter,
    }
    # The dev signal of the last evaluation (paired MRR@10 gain over the base and its z), which
    # the publication guard tested: recorded so ablations can check it against human judgments.
    last_dev = result.dev_metrics[-1] if result.dev_metrics else {}
    training.update({"dev_gain": last_dev.get("gain"), "dev_gain_z": last_dev.get("gain_z")})
    yield artifact_output(
        context, store, ref, upstream={"corpus": corpus, "training_examples": training_examples}, timing=t,
        rows=int(examples.height), config={**dataclasses.asdict(tc), "budget": config.budget},  # resolved, shown once
        models={"base_encoder": base.record(), "fine_tuned_encoder": artifact_model("fine_tuned_encoder", ref, precision=result.precision)},
        seeds={"seed": tc.seed},
        extra={"training": training, "model_card": card_facts, "judge": judge},  # the card's facts: `retriever-forge model-card` re-renders it with scores
        metadata={
            "training_curve": dg.MetadataValue.md(training_curve_markdown(result.history, result.dev_metrics, result.best_step)),
            **({"kept_base_weights": True, "published_weights": dg.MetadataValue.md(KEPT_BASE_SENTENCE)}
               if kept_base else {"kept_base_weights": False}),
            **training, "stopped_early": result.stopped_early,
            "final_loss": losses[-1] if losses else None,
            # the curve's numbers: the dev evaluations as a table (the per-step losses are in the chart and the model folder)
            "dev_metrics": dg.MetadataValue.md(markdown_table(pl.DataFrame(result.dev_metrics[-10:])) if result.dev_metrics else "no dev evaluations"),
        },
    )  # fmt: skip
    yield dg.AssetCheckResult(
        check_name="training_loss_finite", passed=finite and bool(losses),
        metadata={"steps": len(losses), "finite": finite},
    )  # fmt: skip
    yield dg.AssetCheckResult(
        check_name="training_loss_decreasing", passed=trend["decreasing"],
        severity=dg.AssetCheckSeverity.WARN, metadata={k: v for k, v in trend.items() if v is not None},
    )  # fmt: skip


KEPT_BASE_SENTENCE = ("**The published model is the base model**: no training step beat the base encoder on the dev "
                      "queries (best_step 0), so its weights were kept; the fine-tuned row of the scoreboard scores the base weights.")  # fmt: skip


def training_curve_markdown(history: list[dict], dev_metrics: list[dict], best_step: int) -> str:
    """The loss per step and the dev metric per evaluation as one PNG chart, with the published step named."""
    from retriever_forge.charts import line_chart, markdown_image

    if not history:
        return "No training steps."
    dev_key = "mrr@10" if dev_metrics and "mrr@10" in dev_metrics[0] else None
    secondary = {f"dev {dev_key}": ([m["step"] for m in dev_metrics], [m[dev_key] for m in dev_metrics])} if dev_key else None
    png = line_chart({"training loss": ([h["step"] for h in history], [h["loss"] for h in history])},
                     title=f"training loss and dev metric (published step: {best_step})", xlabel="step", ylabel="loss",
                     secondary=secondary)  # fmt: skip
    return markdown_image(png, "training loss and dev metric per step")
