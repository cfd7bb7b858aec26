"""Stages 2–3: synthetic queries from the LLM and graded relevance judgments from the LLM judge."""

import dagster as dg
import polars as pl
from pydantic import Field

from retriever_forge.artifacts import ArtifactRef
from retriever_forge.budget import estimate_plan, plan_message
from retriever_forge.judging import (
    CALIBRATION_TYPES,
    JudgingConfig,
    calibrate_judge,
    judge_check_message,
    judge_pairs,
    judgment_pairs,
    judgment_summary,
)
from retriever_forge.orchestration.assets.common import (
    LLM_POOL,
    LLM_RETRY_POLICY,
    Check,
    artifact_output,
    log_progress,
    markdown_table,
    other_asset_config,
    stage_asset,
    stage_config,
    timed,
)
from retriever_forge.orchestration.resources import ArtifactStoreResource, EncoderResource, LLMResource
from retriever_forge.prompts import load_template
from retriever_forge.querygen import (
    QueryGenerationConfig,
    eligible_passages,
    generate_synthetic_queries,
    generation_summary,
    round_trip_filter,
    style_templates,
)


class SyntheticQueriesConfig(stage_config(QueryGenerationConfig, (
    "documents_to_sample", "min_passage_words", "queries_per_document", "styles", "instruction", "templates", "temperature",
    "max_new_tokens", "round_trip_k", "crop_queries_per_document", "dev_fraction", "seed"), budget=True)):  # fmt: skip
    """Query generation (:class:`~retriever_forge.querygen.QueryGenerationConfig`), the held-out share and the check's threshold."""

    synthetic_test_fraction: float = Field(
        default=0.2, description="Datasets without human judgments: share of passages held out for the synthetic benchmark."
    )
    max_unparseable_share: float = Field(default=0.5, description="Asset check: fail above this share of unusable outputs.")


class RelevanceJudgmentsConfig(stage_config(JudgingConfig, (
    "template", "candidates_per_query", "candidate_rank_start", "calibration_queries", "min_judge_auc", "seed"), budget=True)):  # fmt: skip
    """The judge (:class:`~retriever_forge.judging.JudgingConfig`)."""


@stage_asset(
    "generation", pool=LLM_POOL, retry_policy=LLM_RETRY_POLICY, kinds={"polars", "llm"},
    checks=(Check("unparseable_share", "The share of LLM outputs that could not be parsed into a query stays at or below max_unparseable_share.", blocking=True),
            Check("enough_queries", "At least one synthetic query survived the filters into the train split (training needs them).", blocking=True)),
)  # fmt: skip
def synthetic_queries(
    context: dg.AssetExecutionContext,
    config: SyntheticQueriesConfig,
    corpus: ArtifactRef,
    eval_qrels: ArtifactRef,
    artifact_store: ArtifactStoreResource,
    llm: LLMResource,
    encoder: EncoderResource,
):
    """LLM-written queries for sampled passages (InPars/Promptagator), with every filter decision kept."""
    store = artifact_store.get_store()
    corpus_df = store.read_table(corpus)
    has_human_judgments = store.read_table(eval_qrels).height > 0
    qg = config.to_domain(test_fraction=0.0 if has_human_judgments else config.synthetic_test_fraction)
    # The plan, before any LLM call: what this run will generate and judge, and how long that
    # takes at the throughput measured here (the judging part depends on the judge's self-check).
    eligible, min_words = eligible_passages(corpus_df, qg.min_passage_words)
    # the judge's values as this run will resolve them
    judging = other_asset_config(context, "relevance_judgments", RelevanceJudgmentsConfig, budget=config.budget)
    rates = artifact_store.throughput_log()
    plan = estimate_plan(
        eligible.height, config.budget, corpus_passages=corpus_df.height, documents_to_sample=qg.documents_to_sample,
        queries_per_document=qg.queries_per_document, calibration_queries=judging.calibration_queries,
        candidates_per_query=judging.candidates_per_query, throughput=rates.rates(throughput_models(llm, encoder)),
    )  # fmt: skip
    plan["min_passage_words"] = min_words
    context.log.info(plan_message(plan) + (f"; passages need {min_words}+ words" if min_words else ""))
    with timed(context) as t:
        generator = llm.build(artifact_store.scratch("llm-cache"), chat=True, progress=log_progress(context))
        completer = llm.build(artifact_store.scratch("llm-cache"), chat=False, progress=log_progress(context))
        queries = generate_synthetic_queries(corpus_df, generator, qg, progress=log_progress(context), completion_llm=completer)
        if qg.round_trip_k:
            base = encoder.load(artifact_store)
            queries = round_trip_filter(
                queries, base.encode_texts, base.encode_corpus(corpus_df), corpus_df["doc_id"].to_list(), qg.round_trip_k
            )
        ref = store.put_table(queries, "synthetic_queries")
    summary = generation_summary(queries)
    stats = {k: generator.stats.get(k, 0) + completer.stats.get(k, 0) for k in set(generator.stats) | set(completer.stats)}
    rates.record("generations_per_s", stats.get("misses", 0), stats.get("seconds", 0.0), llm.rate_key())
    templates = {s: t.as_record() for s, t in style_templates(qg).items()}
    models = {"generator": llm.record(generator)}
    if qg.round_trip_k:
        models["round_trip_encoder"] = base.record()
    yield artifact_output(
        context, store, ref, upstream={"corpus": corpus, "eval_qrels": eval_qrels}, timing=t,
        rows=queries.height, config=config.model_dump(), models=models, prompts=templates,
        sampling=dict(temperature=qg.temperature, max_new_tokens=qg.max_new_tokens), seeds={"seed": qg.seed},
        metadata={
            "query_sample": dg.MetadataValue.md(query_sample_markdown(queries, corpus_df, qg.seed)),
            "kept_queries": summary["kept"],
            "dropped_by_filter": dg.MetadataValue.json(summary["dropped"]),
            "splits": dg.MetadataValue.json(summary["splits"]),
            "llm_stats": dg.MetadataValue.json(stats),
            "plan": dg.MetadataValue.json(plan),
            "queries_per_second": round(summary["generated"] / max(stats.get("seconds", 0.0), 1e-9), 2) if stats.get("misses") else None,
        },
    )  # fmt: skip
    share = summary["unparseable_share"]
    yield dg.AssetCheckResult(
        check_name="unparseable_share", passed=share <= config.max_unparseable_share,
        metadata={"unparseable_share": share, "threshold": config.max_unparseable_share},
    )  # fmt: skip
    yield dg.AssetCheckResult(
        check_name="enough_queries", passed=summary["splits"].get("train", 0) > 0,
        metadata={"kept": summary["kept"], "splits": dg.MetadataValue.json(summary["splits"])},
    )  # fmt: skip


def throughput_models(llm: LLMResource, encoder: EncoderResource) -> dict[str, str]:
    """Per rate of the plan that a run records, what it was measured with (a rate measured with another
    model is not used). Encoding is not recorded: the plan keeps its assumed rate, a small term."""
    return {"generations_per_s": llm.rate_key(), "judgments_per_s": llm.rate_key(), "train_examples_per_s": encoder.model}


def query_sample_markdown(queries: pl.DataFrame, corpus: pl.DataFrame, seed: int) -> str:
    """One query per (style, split, filter outcome), with its passage and, if dropped, why."""
    from retriever_forge.samples import snippet, stratified_sample

    sample = stratified_sample(queries, ["style", "split", "dropped_by"], per_group=1, seed=seed).head(30)
    sample = sample.join(corpus.select("doc_id", pl.col("text").alias("passage")), on="doc_id", how="left")
    rows = pl.DataFrame({
        "style": sample["style"], "split": sample["split"],
        "outcome": [f"dropped: {d}" if d else "kept" for d in sample["dropped_by"]],
        "query": [q or f"(unparseable: {snippet(r, 60)})" for q, r in zip(sample["text"], sample["raw_output"], strict=True)],
        "passage": [snippet(p, 140) for p in sample["passage"]],
    })  # fmt: skip
    return markdown_table(rows, max_rows=30, max_chars=160)


def judged_pairs_markdown(judgments: pl.DataFrame, queries: pl.DataFrame, corpus: pl.DataFrame, seed: int = 0) -> str:
    """Two judged pairs per (pair type, grade): the query, the passage and the judge's grade."""
    from retriever_forge.samples import snippet, stratified_sample

    sample = stratified_sample(judgments, ["pair_type", "grade"], per_group=2, seed=seed)
    sample = sample.join(queries.select("query_id", pl.col("text").alias("query")), on="query_id", how="left")
    sample = sample.join(corpus.select("doc_id", pl.col("text").alias("passage")), on="doc_id", how="left")
    rows = pl.DataFrame({
        "pair": sample["pair_type"], "grade": sample["grade"], "expected": sample["expected_grade"].round(2),
        "query": sample["query"], "passage": [snippet(p, 140) for p in sample["passage"]],
    })  # fmt: skip
    return markdown_table(rows, max_rows=20, max_chars=160)


def grade_histogram_markdown(judgments: pl.DataFrame) -> str:
    """Grade counts for source pairs and for retrieved candidates, as one PNG bar chart."""
    from retriever_forge.charts import bar_chart, markdown_image

    counts = {(r["pair_type"], r["grade"]): r["len"] for r in judgments.group_by("pair_type", "grade").len().iter_rows(named=True)}
    labels = [f"{t} {g}" for t in ("source", "candidate") for g in range(4)]
    values = [counts.get((t, g), 0) for t in ("source", "candidate") for g in range(4)]
    return markdown_image(bar_chart(labels, values, title="judge grades (0-3) by pair type", ylabel="pairs"), "grade histogram")


@stage_asset(
    "generation", pool=LLM_POOL, retry_policy=LLM_RETRY_POLICY, kinds={"polars", "llm"},
    checks=(Check("judged_grade_distribution", "Source passages should be judged more relevant than retrieved candidates."),),
)  # fmt: skip
def relevance_judgments(
    context: dg.AssetExecutionContext,
    config: RelevanceJudgmentsConfig,
    corpus: ArtifactRef,
    synthetic_queries: ArtifactRef,
    artifact_store: ArtifactStoreResource,
    llm: LLMResource,
    encoder: EncoderResource,
):
    """UMBRELA 0–3 grades by constrained choice, for each query's source and its top candidates.

    The judge checks itself first: a calibration sample of queries against their own source
    (relevant) and a random passage (not relevant). Below ``min_judge_auc`` ROC AUC its grades
    are noise, so the rest is not judged and the judge filter and graded loss are off downstream.
    """
    cfg = config.to_domain()
    store = artifact_store.get_store()
    corpus_df = store.read_table(corpus)
    queries = store.read_table(synthetic_queries).filter(pl.col("dropped_by").is_null())
    progress = log_progress(context)
    with timed(context) as t:
        judge = llm.build(artifact_store.scratch("llm-cache"), chat=True, progress=progress)
        calibration, check = calibrate_judge(queries, corpus_df, judge, cfg, progress=progress)
        context.log.info(judge_check_message(check))
        judgments = calibration
        if check["used"]:
            base = encoder.load(artifact_store)
            pairs = judgment_pairs(queries, corpus_df, base.encode_corpus(corpus_df), base.encode_texts(queries["text"].to_list()), cfg)
            judged = judge_pairs(pairs, judge, cfg, progress=progress)
            judgments = judged if calibration is None else pl.concat([calibration, judged])
        ref = store.put_table(judgments, "relevance_judgments")
    artifact_store.throughput_log().record("judgments_per_s", judge.stats.get("misses", 0), judge.stats.get("seconds", 0.0), llm.rate_key())
    summary = judgment_summary(judgments, ("source", "candidate", *CALIBRATION_TYPES))
    template = load_template(cfg.template)
    models = {"judge": llm.record(judge)}
    if check["used"]:
        models["candidate_encoder"] = base.record()
    judge_record = {k: check[k] for k in ("auc", "pairs", "used", "min_auc")}
    yield artifact_output(
        context, store, ref, upstream={"corpus": corpus, "synthetic_queries": synthetic_queries}, timing=t, rows=judgments.height,
        config=config.model_dump(), models=models, prompts={"judge": template.as_record()}, extra={"judge": judge_record},
        metadata={"judged_pairs": dg.MetadataValue.md(judged_pairs_markdown(judgments, queries, corpus_df)),
                  "grade_histogram": dg.MetadataValue.md(grade_histogram_markdown(judgments)),
                  "judge_check": dg.MetadataValue.md(judge_check_message(check)),
                  "grades": dg.MetadataValue.json(summary), "llm_stats": dg.MetadataValue.json(dict(judge.stats)),
                  "judge_auc": check["auc"], "judge_used": check["used"]},
    )  # fmt: skip
    if check["used"] and cfg.calibration_queries == 0:
        src = summary.get("source", {}).get("mean_expected_grade", 0.0)
        cand = summary.get("candidate", {}).get("mean_expected_grade", 0.0)
    else:
        src = summary.get("calibration_source", {}).get("mean_expected_grade", 0.0)
        cand = summary.get("calibration_random", {}).get("mean_expected_grade", 0.0)
    yield dg.AssetCheckResult(
        check_name="judged_grade_distribution", passed=bool(src >= cand) and check["used"], severity=dg.AssetCheckSeverity.WARN,
        metadata={"mean_grade_source": src, "mean_grade_other": cand, "judge_auc": check["auc"], "judge_used": check["used"]},
    )  # fmt: skip
