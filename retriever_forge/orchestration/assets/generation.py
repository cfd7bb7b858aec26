"""Stages 2–3: synthetic queries from the LLM and graded relevance judgments from the LLM judge."""


import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from retriever_forge.artifacts import ArtifactRef
from retriever_forge.budget import estimate_plan, plan_message
from retriever_forge.datasets import passage_text
from retriever_forge.encoding import corpus_embeddings, encode_cached
from retriever_forge.judging import (
    CALIBRATION_TYPES,
    JudgingConfig,
    calibration_pairs,
    judge_check,
    judge_check_message,
    judge_pairs,
    judgment_summary,
)
from retriever_forge.orchestration.assets.common import (
    CODE_VERSION,
    LLM_POOL,
    LLM_RETRY_POLICY,
    asset_owners,
    asset_tags,
    check_spec,
    dataset_partitions,
    dataset_spec,
    effective_config,
    log_progress,
    markdown_table,
    publish,
    resolve_config,
    run_config_values,
    timed,
)
from retriever_forge.orchestration.resources import ArtifactStoreResource, EncoderResource, LLMResource
from retriever_forge.prompts import load_template
from retriever_forge.querygen import (
    STYLE_TEMPLATES,
    QueryGenerationConfig,
    eligible_passages,
    generate_synthetic_queries,
    generation_summary,
    round_trip_filter,
    style_templates,
)
from retriever_forge.search import exact_search


class SyntheticQueriesConfig(dg.Config):
    budget: str | None = Field(
        default=None, description="Budget preset quick | standard | thorough (null: the dataset's budget, else standard)."
    )
    documents_to_sample: int | None = Field(default=200, description="Passages to write queries for (null: all).")
    min_passage_words: int = Field(default=0, description="Passages shorter than this (title included) get no queries.")
    queries_per_document: int = Field(default=1, description="Queries per passage; styles are used round-robin.")
    styles: list[str] = Field(default=["question", "keywords", "claim"], description=f"Query styles: {sorted(STYLE_TEMPLATES)}.")
    instruction: str = Field(default="", description="Optional corpus-specific instruction added to the prompt.")
    templates: dict[str, str] = Field(default={}, description="Per style, a template id or a path to your own .txt prompt.")
    temperature: float = Field(default=0.0, description="0: greedy decoding.")
    max_new_tokens: int = 32
    round_trip_k: int | None = Field(default=10, description="Promptagator round-trip filter depth (null: off).")
    crop_queries_per_document: int = Field(
        default=0, description="Corpus-only pseudo-queries: random word spans per passage, positive = the passage (Contriever-style; 0: off)."
    )
    dev_fraction: float = Field(default=0.1, description="Share of passages whose queries form the dev split.")
    synthetic_test_fraction: float = Field(
        default=0.2, description="Datasets without human judgments: share of passages held out for the synthetic benchmark."
    )
    max_unparseable_share: float = Field(default=0.5, description="Asset check: fail above this share of unusable outputs.")
    seed: int = 0


class RelevanceJudgmentsConfig(dg.Config):
    budget: str | None = Field(
        default=None, description="Budget preset quick | standard | thorough (null: the dataset's budget, else standard)."
    )
    template: str = Field(default="judge/umbrela_v1", description="Judge prompt template id or .txt path.")
    candidates_per_query: int = Field(default=8, description="Base-retriever candidates judged per query.")
    candidate_rank_start: int = Field(default=1, description="1-based rank of the first candidate judged.")
    calibration_queries: int = Field(
        default=100, description="Judge self-check: queries judged against their own source and a random passage (0: no check)."
    )
    min_judge_auc: float | None = Field(
        default=0.75, description="Below this calibration ROC AUC the judge does not steer training and the rest is not judged (null: always use it)."
    )
    seed: int = 0


@dg.asset(
    partitions_def=dataset_partitions,
    group_name="generation",
    owners=asset_owners(),
    tags=asset_tags("generation"),
    io_manager_key="artifact_io",
    code_version=CODE_VERSION,
    pool=LLM_POOL,
    retry_policy=LLM_RETRY_POLICY,
    kinds={"polars", "llm"},
    check_specs=[
        check_spec("unparseable_share", "synthetic_queries", "The share of LLM outputs that could not be parsed into a query stays at or below max_unparseable_share.", blocking=True),
        check_spec("enough_queries", "synthetic_queries", "At least one synthetic query survived the filters into the train split (training needs them).", blocking=True),
    ],
)
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
    spec = dataset_spec(context)
    values = effective_config(context, config)
    preset = values["budget"]
    store = artifact_store.get_store()
    corpus_df = store.read_table(corpus)
    has_human_judgments = store.read_table(eval_qrels).height > 0
    qg = QueryGenerationConfig(
        documents_to_sample=values["documents_to_sample"],
        min_passage_words=values["min_passage_words"],
        queries_per_document=values["queries_per_document"],
        styles=tuple(values["styles"]),
        instruction=values["instruction"],
        template_overrides=values["templates"],
        temperature=values["temperature"],
        max_new_tokens=values["max_new_tokens"],
        round_trip_k=values["round_trip_k"],
        crop_queries_per_document=values["crop_queries_per_document"],
        dev_fraction=values["dev_fraction"],
        test_fraction=0.0 if has_human_judgments else values["synthetic_test_fraction"],
        seed=values["seed"],
    )
    # The plan, before any LLM call: what this run will generate and judge, and how long that
    # takes at the throughput measured here (the judging part depends on the judge's self-check).
    eligible, min_words = eligible_passages(corpus_df, qg.min_passage_words)
    typed = run_config_values(context, "relevance_judgments")  # the judge's values as this run will resolve them
    judging = resolve_config(RelevanceJudgmentsConfig(**{**typed, "budget": typed.get("budget", preset)}), spec, "relevance_judgments",
                             explicit=set(typed) | {"budget"})  # fmt: skip
    plan = estimate_plan(
        eligible.height, preset, corpus_passages=corpus_df.height, documents_to_sample=qg.documents_to_sample,
        queries_per_document=qg.queries_per_document, calibration_queries=judging["calibration_queries"],
        candidates_per_query=judging["candidates_per_query"],
    )  # fmt: skip
    plan["min_passage_words"] = min_words
    context.log.info(plan_message(plan) + (f"; passages need {min_words}+ words" if min_words else ""))
    with timed(context) as t:
        generator = llm.build(artifact_store.scratch("llm-cache"), chat=True, progress=log_progress(context))
        completer = llm.build(artifact_store.scratch("llm-cache"), chat=False, progress=log_progress(context))
        queries = generate_synthetic_queries(corpus_df, generator, qg, progress=log_progress(context), completion_llm=completer)
        if qg.round_trip_k:
            enc = encoder.load()
            corpus_emb = corpus_embeddings(enc, corpus_df, artifact_store.scratch("embeddings"), encoder.batch_size)
            kept = queries.filter(pl.col("dropped_by").is_null())
            q_emb = encode_cached(enc, kept["text"].to_list(), None, batch_size=encoder.batch_size)
            queries = round_trip_filter(queries, q_emb, corpus_emb, corpus_df["doc_id"].to_list(), qg.round_trip_k)
        ref = store.put_table(queries, "synthetic_queries")
    summary = generation_summary(queries)
    stats = {k: generator.stats.get(k, 0) + completer.stats.get(k, 0) for k in set(generator.stats) | set(completer.stats)}
    templates = {s: t.as_record() for s, t in style_templates(qg).items()}
    models = {"generator": {"id": generator.model_id, "weights_hash": generator.weights_hash, "backend": llm.backend,
                            "numerics": generator.numerics}}  # fmt: skip
    if qg.round_trip_k:
        models["round_trip_encoder"] = enc.record()
    kept = queries.filter(pl.col("dropped_by").is_null())
    yield publish(
        context, store, ref, asset="synthetic_queries", upstream={"corpus": corpus, "eval_qrels": eval_qrels}, timing=t,
        rows=queries.height, config=values, models=models, prompts=templates,
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
        check_name="unparseable_share", asset_key="synthetic_queries", passed=share <= values["max_unparseable_share"],
        metadata={"unparseable_share": share, "threshold": values["max_unparseable_share"]},
    )  # fmt: skip
    yield dg.AssetCheckResult(
        check_name="enough_queries", asset_key="synthetic_queries", passed=summary["splits"].get("train", 0) > 0,
        metadata={"kept": summary["kept"], "splits": dg.MetadataValue.json(summary["splits"])},
    )  # fmt: skip


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


def judgment_pairs(queries: pl.DataFrame, corpus: pl.DataFrame, corpus_emb: np.ndarray, query_emb: np.ndarray, cfg: JudgingConfig) -> pl.DataFrame:
    """Source pairs plus the base retriever's candidates in the configured rank window."""
    doc_ids = corpus["doc_id"].to_list()
    passages = {d: passage_text(t, x) for d, t, x in corpus.select("doc_id", "title", "text").iter_rows()}
    depth = cfg.candidate_rank_start - 1 + cfg.candidates_per_query + 1  # +1: the source may sit in the window
    _, idx = exact_search(query_emb, corpus_emb, k=depth)
    rows = []
    for i, (qid, source, text) in enumerate(queries.select("query_id", "doc_id", "text").iter_rows()):
        rows.append((qid, text, source, passages[source], "source", 0))
        taken = 0
        for rank, j in enumerate(idx[i], start=1):
            doc = doc_ids[int(j)]
            if rank < cfg.candidate_rank_start or doc == source or j < 0:
                continue
            if taken == cfg.candidates_per_query:
                break
            rows.append((qid, text, doc, passages[doc], "candidate", rank))
            taken += 1
    return pl.DataFrame(
        rows, orient="row",
        schema={"query_id": pl.String, "query": pl.String, "doc_id": pl.String, "passage": pl.String,
                "pair_type": pl.String, "retrieval_rank": pl.Int64},
    )  # fmt: skip


@dg.asset(
    partitions_def=dataset_partitions,
    group_name="generation",
    owners=asset_owners(),
    tags=asset_tags("generation"),
    io_manager_key="artifact_io",
    code_version=CODE_VERSION,
    pool=LLM_POOL,
    retry_policy=LLM_RETRY_POLICY,
    kinds={"polars", "llm"},
    check_specs=[
        check_spec("judged_grade_distribution", "relevance_judgments", description="Source passages should be judged more relevant than retrieved candidates."),
    ],
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
    values = effective_config(context, config)
    cfg = JudgingConfig(template=values["template"], candidates_per_query=values["candidates_per_query"],
                        candidate_rank_start=values["candidate_rank_start"], calibration_queries=values["calibration_queries"],
                        min_auc=values["min_judge_auc"], seed=values["seed"])  # fmt: skip
    store = artifact_store.get_store()
    corpus_df = store.read_table(corpus)
    queries = store.read_table(synthetic_queries).filter(pl.col("dropped_by").is_null())
    progress = log_progress(context)
    with timed(context) as t:
        judge = llm.build(artifact_store.scratch("llm-cache"), chat=True, progress=progress)
        if cfg.calibration_queries > 0:
            pool = queries.filter(pl.col("split").is_in(["train", "dev"]))
            calibration = judge_pairs(calibration_pairs(pool, corpus_df, cfg.calibration_queries, cfg.seed), judge, cfg, progress=progress)
            check = judge_check(calibration, cfg.min_auc)
        else:
            calibration = None
            check = {"auc": None, "pairs": 0, "used": True, "min_auc": None, "grades": {}}
        context.log.info(judge_check_message(check))
        if check["used"]:
            enc = encoder.load()
            corpus_emb = corpus_embeddings(enc, corpus_df, artifact_store.scratch("embeddings"), encoder.batch_size)
            query_emb = encode_cached(enc, queries["text"].to_list(), None, batch_size=encoder.batch_size)
            pairs = judgment_pairs(queries, corpus_df, corpus_emb, query_emb, cfg)
            judgments = judge_pairs(pairs, judge, cfg, progress=progress)
            if calibration is not None:
                judgments = pl.concat([calibration, judgments])
        else:
            judgments = calibration
        ref = store.put_table(judgments, "relevance_judgments")
    summary = judgment_summary(judgments, ("source", "candidate", *CALIBRATION_TYPES))
    template = load_template(cfg.template)
    models = {"judge": {"id": judge.model_id, "weights_hash": judge.weights_hash, "backend": llm.backend, "numerics": judge.numerics}}
    if check["used"]:
        models["candidate_encoder"] = enc.record()
    judge_record = {k: check[k] for k in ("auc", "pairs", "used", "min_auc")}
    yield publish(
        context, store, ref, asset="relevance_judgments",
        upstream={"corpus": corpus, "synthetic_queries": synthetic_queries}, timing=t, rows=judgments.height,
        config=values, models=models, prompts={"judge": template.as_record()}, extra={"judge": judge_record},
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
        check_name="judged_grade_distribution", asset_key="relevance_judgments", passed=bool(src >= cand) and check["used"],
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"mean_grade_source": src, "mean_grade_other": cand, "judge_auc": check["auc"], "judge_used": check["used"]},
    )  # fmt: skip
