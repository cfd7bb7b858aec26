"""What every asset does the same way: partitions, publishing an artifact with its manifest,
reading upstream tables, and per-dataset config overrides."""


import time
from contextlib import contextmanager

import dagster as dg
import polars as pl

from retriever_forge.artifacts import ArtifactRef, ArtifactStore
from retriever_forge.datasets import DatasetSpec, load_registry
from retriever_forge.provenance import build_manifest, code_version, now, trace, trace_markdown

# One partition per named dataset in datasets.yaml. The partitions are dynamic (kept in the
# Dagster instance, not in the code), so a new dataset is materializable without reloading the
# code location: `retriever-forge datasets add` registers it at once, and the
# `dataset_registry` sensor registers datasets added to (or removed from) the file by hand.
DATASET_PARTITIONS = "datasets"
dataset_partitions = dg.DynamicPartitionsDefinition(name=DATASET_PARTITIONS)
CODE_VERSION = code_version()

# Shared hardware as Dagster concurrency pools: every step that drives the LLM runs in the `llm`
# pool and every step that runs the encoder on the accelerator in the `gpu` pool, so ten datasets
# queue for one vLLM server and one GPU instead of oversubscribing them. The limits are set in
# the instance (dagster.yaml `concurrency: pools: default_limit`, or `dagster instance
# concurrency set gpu 1`); without a limit a pool does not restrict anything.
LLM_POOL = "llm"
GPU_POOL = "gpu"
# LLM steps talk to a server that may be restarting or overloaded: retry them with backoff.
# Their generations are cached durably, so a retry resumes where the failed attempt stopped.
LLM_RETRY_POLICY = dg.RetryPolicy(max_retries=3, delay=20, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def changed_upstream_condition() -> dg.AutomationCondition:
    """Declarative automation for every asset: run a dataset's asset when an upstream asset's data
    version changed (for the `dataset_source`: its files' content hash) or its own code version
    changed, once every upstream is present and none is running.

    It is Dagster's ``eager()`` with code-version changes added. Like ``eager()`` it reacts only to
    changes seen between two evaluations (``since_last_handled``): partitions that were already
    stale or missing when the automation sensor is first switched on are not launched in one
    flood, and a sensor switched back on after a pause launches at most one run per changed
    dataset. An unchanged night (same files, code and datasets-file entry) launches nothing.
    """
    A = dg.AutomationCondition
    return (
        (A.newly_missing() | A.any_deps_updated() | A.code_version_changed()).since_last_handled()
        & ~A.any_deps_missing()
        & ~A.any_deps_in_progress()
        & ~A.in_progress()
    ).with_label("changed_upstream")


def registry_changes(instance: dg.DagsterInstance, registry: dict[str, DatasetSpec] | None = None) -> tuple[list[str], list[str]]:
    """(datasets in the file but not yet partitions, partitions no longer in the file)."""
    names = set(load_registry() if registry is None else registry)
    known = set(instance.get_dynamic_partitions(DATASET_PARTITIONS))
    return sorted(names - known), sorted(known - names)


def sync_dataset_partitions(
    instance: dg.DagsterInstance, registry: dict[str, DatasetSpec] | None = None, remove: bool = True
) -> tuple[list[str], list[str]]:
    """Make the instance's dataset partitions those of the datasets file; returns (added, removed).

    ``remove=False`` only adds (for one-off runs that may use another datasets file).
    """
    added, removed = registry_changes(instance, registry)
    removed = removed if remove else []
    if added:
        instance.add_dynamic_partitions(DATASET_PARTITIONS, added)
    for name in removed:
        instance.delete_dynamic_partition(DATASET_PARTITIONS, name)
    return added, removed


def dataset_spec(context: dg.AssetExecutionContext) -> DatasetSpec:
    name = context.partition_key
    registry = load_registry()  # re-read: the file may have changed since the code location loaded
    if name not in registry:
        raise dg.Failure(f"dataset {name!r} is not in the datasets file; known: {sorted(registry)}")
    return registry[name]


def explicit_fields(context: dg.AssetExecutionContext | None, config: dg.Config, asset: str) -> set[str]:
    """The config fields the run config names for ``asset``. Dagster drops a value equal to the
    field's default from ``model_fields_set``, so the run's own run config is read as well: an
    explicit ``queries_per_document: 1`` must beat a preset's 3 even though 1 is the default."""
    fields = set(config.model_fields_set)
    if context is not None:
        raw = ((context.run.run_config or {}).get("ops") or {}).get(asset) or {}
        fields |= set((raw.get("config") or {}) if isinstance(raw, dict) else {})
    return fields


def effective_config(config: dg.Config, spec: DatasetSpec, asset: str, context: dg.AssetExecutionContext | None = None) -> dict:
    """Config values: run config set explicitly > the dataset's overrides in datasets.yaml >
    the budget preset (:mod:`retriever_forge.budget`) > defaults.

    Assets a budget sizes have a ``budget`` config field; unset, it is the dataset's ``budget:``
    in datasets.yaml, else ``standard``. The resolved name is recorded as ``values["budget"]``.
    """
    values = config.model_dump()
    explicit = explicit_fields(context, config, asset)
    if "budget" in values:
        from retriever_forge.budget import DEFAULT_BUDGET, check_budget, preset_values

        values["budget"] = check_budget(values["budget"] or spec.budget or DEFAULT_BUDGET)
        for key, value in preset_values(values["budget"], asset).items():
            if key in values and key not in explicit:
                values[key] = value
    overrides = (spec.extra or {}).get("overrides", {}).get(asset, {})
    for key, value in overrides.items():
        if key not in values:
            raise dg.Failure(f"datasets file: dataset {spec.name!r}: {asset}.{key} is not a config field of {asset}")
        if key not in explicit:
            values[key] = value
    return values


def read_table(store: ArtifactStore, ref: ArtifactRef) -> pl.DataFrame:
    return store.read_table(ref)


def markdown_table(df: pl.DataFrame, max_rows: int = 10, max_chars: int = 120) -> str:
    """A small Markdown preview of a table for the UI."""
    df = df.head(max_rows)
    cols = df.columns

    def cell(v) -> str:
        s = str(v).replace("|", "\\|").replace("\n", " ")
        return s if len(s) <= max_chars else s[: max_chars - 1] + "…"

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join(lines)


@contextmanager
def timed(context: dg.AssetExecutionContext | None = None):
    """Yields a dict that receives ``started_at`` now and ``seconds`` on exit.

    Given the asset's context (the timing of its whole work), it also emits the OpenLineage START
    of each asset the step materializes, when an OpenLineage transport is configured.
    """
    box = {"started_at": now(), "t0": time.perf_counter()}
    if context is not None:
        from retriever_forge.assets.lineage_hooks import emit_start

        emit_start(context)
    try:
        yield box
    finally:
        box["seconds"] = round(time.perf_counter() - box["t0"], 2)


def publish(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    ref: ArtifactRef,
    *,
    asset: str,
    upstream: dict[str, ArtifactRef],
    timing: dict,
    rows: int | None = None,
    config: dict | None = None,
    models: dict | None = None,
    prompts: dict | None = None,
    sampling: dict | None = None,
    seeds: dict | None = None,
    metadata: dict | None = None,
    output_name: str = "result",
    with_trace: bool = False,
    extra: dict | None = None,
) -> dg.Output:
    """Write the artifact's manifest and wrap the ref in an Output whose data version is its hash.

    ``extra`` lands in the manifest's ``extra`` record beside the asset's seconds.
    """
    manifest = build_manifest(
        ref,
        asset=asset,
        upstream=upstream,
        partition=context.partition_key if context.has_partition_key else None,
        run_id=context.run.run_id,
        config=config,
        models=models,
        prompts=prompts,
        sampling=sampling,
        seeds=seeds,
        rows=rows,
        started_at=timing.get("started_at"),
        extra={"seconds": timing.get("seconds"), **(extra or {})},
    )
    store.write_manifest(ref, manifest)
    md = {
        "artifact_hash": ref.hash,
        "artifact_path": dg.MetadataValue.path(ref.payload_uri),
        "code_version": manifest["code_version"],
        "upstream_hashes": dg.MetadataValue.json(manifest["upstream"]),
        "seconds": timing.get("seconds"),
        "manifest": dg.MetadataValue.json(manifest),
    }
    if rows is not None:
        md["dagster/row_count"] = rows
    if models:
        md["models"] = dg.MetadataValue.json(models)
    if prompts:
        md["prompts"] = dg.MetadataValue.json(prompts)
    if config:
        md["config"] = dg.MetadataValue.json(config)
    if with_trace:
        md["lineage"] = dg.MetadataValue.md(trace_markdown(trace(store, ref.hash)))
    md.update(metadata or {})
    return dg.Output(ref, output_name=output_name, metadata=md, data_version=dg.DataVersion(ref.hash))


def log_progress(context: dg.AssetExecutionContext):
    return lambda message: context.log.info(message)
