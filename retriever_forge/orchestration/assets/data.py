"""Stage 1: the corpus and, where the dataset has them, its human-judged evaluation queries."""

import dagster as dg
import polars as pl

from retriever_forge import schemas
from retriever_forge.datasets import QUARANTINE, DatasetError, load_dataset, load_registry
from retriever_forge.fingerprint import dataset_version, report_once
from retriever_forge.orchestration.assets.common import (
    CODE_VERSION,
    DATASET_PARTITIONS,
    artifact_output,
    asset_owners,
    asset_tags,
    check_spec,
    dataset_partitions,
    dataset_spec,
    markdown_table,
    timed,
)
from retriever_forge.orchestration.resources import ArtifactStoreResource
from retriever_forge.provenance import build_manifest

CHECKS = [
    check_spec("corpus_schema", "corpus", "The corpus table has the expected columns and types (doc_id, title, text).", blocking=True),
    check_spec("corpus_non_empty_unique_ids", "corpus", "The corpus has passages and no doc_id appears twice.", blocking=True),
    check_spec("corpus_quarantine", "corpus", blocking=True, description="Rows set aside as unusable (bad JSON, bad ids, empty or oversized passages) stay "
                                  "within the dataset's max_quarantine_share; the table of them is stored beside the corpus."),
]  # fmt: skip


@dg.observable_source_asset(
    partitions_def=dataset_partitions,
    group_name="data",
    required_resource_keys={"artifact_store"},
    description="What each dataset is read from (its files and its datasets-file entry). Observing it records a "
                "data version, the content hash of the files; automation re-runs a dataset only when it changed.",
)  # fmt: skip
def dataset_source(context) -> dg.DataVersionsByPartition:
    """One data version per registered dataset; a dataset that cannot be read gets none (so nothing
    downstream is launched for it) and is reported in one line, once per distinct problem."""
    work = context.resources.artifact_store.scratch("fingerprints")
    registry = load_registry()
    versions, problems = {}, {}
    for name in context.instance.get_dynamic_partitions(DATASET_PARTITIONS):
        if name not in registry:
            continue  # removed from the file; the dataset_registry sensor deletes the partition
        try:
            versions[name] = dg.DataVersion(dataset_version(registry[name], work / "files.json"))
        except DatasetError as e:
            problems[name] = str(e).splitlines()[0]
    for name, line in report_once(problems, work / "reported.json").items():
        context.log.warning(f"dataset {name!r} cannot be read and is skipped until it changes: {line}")
    context.log.info(f"observed {len(versions)} datasets" + (f"; {len(problems)} unreadable: {sorted(problems)}" if problems else ""))
    return dg.DataVersionsByPartition(versions)


@dg.multi_asset(
    deps=[dataset_source],
    outs={
        name: dg.AssetOut(io_manager_key="artifact_io", code_version=CODE_VERSION, kinds=kinds, owners=asset_owners(), tags=asset_tags("data"),
                          description=description)
        for name, kinds, description in (
            ("corpus", {"polars", "parquet"}, "Passages of the dataset: doc_id, title, text."),
            ("eval_queries", {"polars"}, "Human-judged test queries (empty when the dataset has none)."),
            ("eval_qrels", {"polars"}, "Human relevance judgments (empty when the dataset has none)."),
        )
    },
    partitions_def=dataset_partitions,
    group_name="data",
    check_specs=CHECKS,
)  # fmt: skip
def corpus(context: dg.AssetExecutionContext, artifact_store: ArtifactStoreResource):
    """Load the partition's dataset (BEIR folder, files, ir_datasets id or the offline demo)."""
    spec = dataset_spec(context)
    store = artifact_store.get_store()
    with timed(context) as t:
        try:
            ds = load_dataset(spec)
        except DatasetError as e:
            raise dg.Failure(str(e)) from e
        corpus_ref = store.put_table(ds.corpus, "corpus")
        queries = ds.queries if ds.queries is not None else pl.DataFrame(schema=schemas.QUERIES)
        qrels = ds.qrels if ds.qrels is not None else pl.DataFrame(schema=schemas.QRELS)
        queries_ref = store.put_table(queries, "eval_queries")
        qrels_ref = store.put_table(qrels, "eval_qrels")
        quarantine = ds.quarantine if ds.quarantine is not None else pl.DataFrame(schema=QUARANTINE)
        quarantine_ref = store.put_table(quarantine, "corpus_quarantine")
        store.write_manifest(quarantine_ref, build_manifest(
            quarantine_ref, asset="corpus_quarantine", upstream={}, partition=spec.name, run_id=context.run.run_id,
            config={"dataset": spec.as_dict()}, rows=quarantine.height))  # fmt: skip
    source = {"dataset": spec.as_dict()}
    quarantined = ds.corpus_quarantined
    # Judgments naming a passage that is missing or was set aside as empty: harmless (nothing can
    # retrieve it), so counted and listed, never a failure.
    missing = quarantine.filter((pl.col("table") == "qrels") & pl.col("reason").str.contains("unknown document"))
    yield artifact_output(
        context, store, corpus_ref, upstream={}, timing=t, rows=ds.corpus.height, config=source,
        output_name="corpus",
        metadata={
            "quarantined_rows": quarantined,
            "qrels_naming_missing_passages": missing.height,
            "qrels_missing_passage_examples": dg.MetadataValue.json(missing["doc_id"].head(5).to_list()),
            "quarantine_table": dg.MetadataValue.path(quarantine_ref.payload_uri),
            "mean_words": round(float(ds.corpus["text"].str.split(" ").list.len().mean()), 1),
            "preview": dg.MetadataValue.md(markdown_table(ds.corpus, 5)),
        },
    )  # fmt: skip
    judged = "human" if ds.has_judgments else "none"
    for name, ref, df in (("eval_queries", queries_ref, queries), ("eval_qrels", qrels_ref, qrels)):
        yield artifact_output(
            context, store, ref, upstream={"corpus": corpus_ref}, timing=t, rows=df.height, config=source,
            output_name=name, metadata={"judgments": judged},
        )  # fmt: skip
    problems = schemas.check_schema(ds.corpus, schemas.CORPUS, "corpus")
    yield dg.AssetCheckResult(check_name="corpus_schema", asset_key="corpus", passed=not problems,
                              metadata={"problems": "; ".join(problems) or "none"})  # fmt: skip
    dupes = ds.corpus.height - ds.corpus["doc_id"].n_unique()
    yield dg.AssetCheckResult(
        check_name="corpus_non_empty_unique_ids", asset_key="corpus", passed=ds.corpus.height > 0 and dupes == 0,
        metadata={"rows": ds.corpus.height, "duplicate_ids": dupes, "quarantined_rows": quarantined},
    )  # fmt: skip
    share = quarantined / max(quarantined + ds.corpus.height, 1)
    reasons = quarantine.group_by("table", "reason").len().sort("len", descending=True)
    yield dg.AssetCheckResult(
        check_name="corpus_quarantine", asset_key="corpus", passed=share <= spec.max_quarantine_share,
        metadata={
            "quarantined_corpus_rows": quarantined, "quarantined_share": round(share, 6),
            "threshold": spec.max_quarantine_share, "policy": spec.on_bad_rows,
            "quarantined_query_and_judgment_rows": quarantine.height - quarantined,
            "by_reason": dg.MetadataValue.md(markdown_table(reasons, 20)),
            "rows": dg.MetadataValue.md(markdown_table(quarantine.select("table", "line", "doc_id", "reason"), 10)),
            "quarantine_table": dg.MetadataValue.path(quarantine_ref.payload_uri),
        },
    )  # fmt: skip
