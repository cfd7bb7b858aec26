"""OpenLineage ``RunEvent``s for every materialization, built with ``openlineage-python``.

Each materialized artifact is one OpenLineage run of the job named after its asset: a ``START`` when
the asset begins, a ``COMPLETE`` (or ``FAIL``) when it ends. Datasets are named the way the
store names them: namespace = the artifact store root, name = ``asset/partition``. Facets:

- output datasets: ``schema`` (tables' columns and types), ``version`` (the content hash),
  ``dataSource`` (the payload's location), ``dataQualityAssertions`` (the asset checks of that
  run) and the output statistics (rows, bytes); inputs carry their version and row count;
- job: ``sourceCodeLocation`` (git, with the commit), ``jobType``, ``documentation``;
- run: ``parent`` (the Dagster run), ``processing_engine`` (Dagster), ``errorMessage`` on FAIL,
  and custom facets ``retrieverForge_models`` (models with weight hashes), ``retrieverForge_prompts``
  (prompt ids, hashes and text) and ``retrieverForge_provenance`` (code version, config, seeds,
  sampling), whose JSON schemas ship in ``openlineage_facets.json`` beside this module.

Run ids are uuid5 of (Dagster run id, asset, partition): live emission and a later
``retriever-forge lineage export`` of the same artifact give the same OpenLineage run.

Emission goes through :class:`openlineage.client.OpenLineageClient`, configured the OpenLineage
way: ``OPENLINEAGE_URL`` (HTTP, e.g. Marquez at ``http://localhost:5000``; ``OPENLINEAGE_API_KEY``
if needed), ``OPENLINEAGE_CONFIG`` / ``openlineage.yml``, or ``OPENLINEAGE__TRANSPORT__*`` variables
(``TYPE=file`` with ``LOG_FILE_PATH`` and ``APPEND=true`` for JSON lines, ``TYPE=console``). With
none of these set nothing is emitted; ``OPENLINEAGE_DISABLED=true`` turns it off.

Example:
    >>> import polars as pl, tempfile
    >>> from retriever_forge.artifacts import ArtifactStore
    >>> from retriever_forge.provenance import build_manifest
    >>> store = ArtifactStore(tempfile.mkdtemp())
    >>> ref = store.put_table(pl.DataFrame({"doc_id": ["d1"]}), "corpus")
    >>> m = build_manifest(ref, asset="corpus", upstream={}, partition="demo", run_id="r1", started_at="2026-01-01T00:00:00+00:00")
    >>> start, complete = artifact_events(store, ref, m)
    >>> start.eventType.value, complete.outputs[0].name, complete.outputs[0].facets["schema"].fields[0].name
    ('START', 'corpus/demo', 'doc_id')
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import attr
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    JobFacet,
    RunFacet,
    data_quality_assertions_dataset,
    dataset_version_dataset,
    datasource_dataset,
    documentation_job,
    error_message_run,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    processing_engine_run,
    schema_dataset,
    source_code_location_job,
)

from retriever_forge.artifacts import ArtifactRef, ArtifactStore

log = logging.getLogger(__name__)

PRODUCER = "https://pypi.org/project/retriever-forge/"
JOB_NAMESPACE = os.environ.get("OPENLINEAGE_NAMESPACE", "retriever-forge")
FACETS_SCHEMA_FILE = Path(__file__).with_name("openlineage_facets.json")
# The custom facets' schema identity (consumers treat _schemaURL as an opaque name of the shape).
FACETS_SCHEMA_URL = "urn:retriever-forge:openlineage-facets:1-0-0"
_RUN_NAMESPACE = uuid.UUID("5b0a4c4e-7f5e-4d35-9d0a-6a1f2f0b7e11")


@attr.define
class ModelsRunFacet(RunFacet):
    """Models a step used, each with its id and weights hash."""

    models: dict = attr.field(factory=dict)

    @staticmethod
    def _get_schema() -> str:
        return f"{FACETS_SCHEMA_URL}#/$defs/ModelsRunFacet"


@attr.define
class PromptsRunFacet(RunFacet):
    """Prompt templates a step sent, each with its id, hash, format and text."""

    prompts: dict = attr.field(factory=dict)

    @staticmethod
    def _get_schema() -> str:
        return f"{FACETS_SCHEMA_URL}#/$defs/PromptsRunFacet"


@attr.define
class ProvenanceRunFacet(RunFacet):
    """What the manifest records beyond models and prompts: code version, config, seeds, sampling."""

    contentHash: str | None = attr.field(default=None)  # noqa: N815 - OpenLineage's camelCase
    codeVersion: str | None = attr.field(default=None)  # noqa: N815
    gitCommit: str | None = attr.field(default=None)  # noqa: N815
    config: dict = attr.field(factory=dict)
    seeds: dict = attr.field(factory=dict)
    sampling: dict = attr.field(factory=dict)
    dagsterRunId: str | None = attr.field(default=None)  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return f"{FACETS_SCHEMA_URL}#/$defs/ProvenanceRunFacet"


def store_namespace(root: str) -> str:
    """The datasets' namespace: the store root as a URL (``file://`` for local folders).

    >>> store_namespace("s3://bucket/forge"), store_namespace("/data/forge")
    ('s3://bucket/forge', 'file:///data/forge')
    """
    return root if "://" in root else f"file://{Path(root).resolve()}"


def openlineage_run_id(dagster_run_id: str | None, asset: str, partition: str | None) -> str:
    """The OpenLineage run of one materialization (stable across live emission and export)."""
    return str(uuid.uuid5(_RUN_NAMESPACE, f"{dagster_run_id}/{asset}/{partition}"))


def _dataset_name(asset: str, partition: str | None) -> str:
    return f"{asset}/{partition or '__all__'}"


def _time(value: str | None) -> str:
    return value or datetime.now(UTC).isoformat(timespec="seconds")


def _job(asset: str, manifest: dict | None = None) -> Job:
    from retriever_forge.provenance import _PKG_DIR, git_commit

    commit = (manifest or {}).get("git_commit") or git_commit()
    facets: dict[str, JobFacet] = {
        "jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="DAGSTER", jobType="ASSET", producer=PRODUCER),
        "documentation": documentation_job.DocumentationJobFacet(
            description=f"retriever-forge asset {asset!r}: one materialization per dataset partition", producer=PRODUCER),
    }  # fmt: skip
    if commit:
        facets["sourceCodeLocation"] = source_code_location_job.SourceCodeLocationJobFacet(
            type="git", url=f"file://{_PKG_DIR}", repoUrl=f"file://{_PKG_DIR.parent}", path="retriever_forge",
            version=commit.removesuffix("-dirty"), producer=PRODUCER)  # fmt: skip
    return Job(namespace=JOB_NAMESPACE, name=asset, facets=facets)


def _run_facets(manifest: dict, dagster_run_id: str | None) -> dict[str, RunFacet]:
    facets: dict[str, RunFacet] = {}
    if dagster_run_id:
        facets["parent"] = parent_run.ParentRunFacet(
            run=parent_run.Run(runId=dagster_run_id if _is_uuid(dagster_run_id) else str(uuid.uuid5(_RUN_NAMESPACE, dagster_run_id))),
            job=parent_run.Job(namespace=JOB_NAMESPACE, name="dagster_run"), producer=PRODUCER)  # fmt: skip
    dagster_version = (manifest.get("packages") or {}).get("dagster")
    if dagster_version:
        facets["processing_engine"] = processing_engine_run.ProcessingEngineRunFacet(
            version=dagster_version, name="Dagster", openlineageAdapterVersion=_openlineage_version(), producer=PRODUCER)  # fmt: skip
    if manifest.get("models"):
        facets["retrieverForge_models"] = ModelsRunFacet(models=manifest["models"], producer=PRODUCER)
    if manifest.get("prompts"):
        facets["retrieverForge_prompts"] = PromptsRunFacet(prompts=manifest["prompts"], producer=PRODUCER)
    if manifest.get("content_hash"):
        facets["retrieverForge_provenance"] = ProvenanceRunFacet(
            contentHash=manifest.get("content_hash"), codeVersion=manifest.get("code_version"), gitCommit=manifest.get("git_commit"),
            config=json.loads(json.dumps(manifest.get("config") or {}, default=str)), seeds=manifest.get("seeds") or {},
            sampling=manifest.get("sampling") or {}, dagsterRunId=dagster_run_id, producer=PRODUCER)  # fmt: skip
    return facets


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _openlineage_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("openlineage-python")


def _schema_facet(store: ArtifactStore, ref: ArtifactRef) -> schema_dataset.SchemaDatasetFacet | None:
    if ref.format != "parquet":
        return None
    import polars as pl

    try:
        with store.fs.open(ref.payload_uri, "rb") as f:
            schema = pl.read_parquet_schema(f)
    except (OSError, pl.exceptions.PolarsError):  # unreadable: verification reports it; the event goes without schema
        return None
    return schema_dataset.SchemaDatasetFacet(
        fields=[schema_dataset.SchemaDatasetFacetFields(name=n, type=str(t)) for n, t in schema.items()], producer=PRODUCER
    )


def _size(store: ArtifactStore, ref: ArtifactRef) -> int | None:
    try:
        return int(store.fs.du(ref.payload_uri)) if ref.format == "folder" else int(store.fs.size(ref.payload_uri))
    except (OSError, NotImplementedError):
        return None


def _assertions(checks: list[dict]) -> data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet | None:
    if not checks:
        return None
    return data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet(
        assertions=[data_quality_assertions_dataset.Assertion(
            assertion=c["check_name"], success=bool(c["passed"]), severity="warn" if c.get("severity") == "WARN" else "error",
            name=c["check_name"], actual=json.dumps(c.get("metadata") or {}, default=str)[:2000]) for c in checks],
        producer=PRODUCER)  # fmt: skip


def output_dataset(store: ArtifactStore, ref: ArtifactRef, manifest: dict, checks: list[dict] | None = None) -> OutputDataset:
    """The artifact as an OpenLineage output dataset with its schema, version and quality facets."""
    facets = {
        "version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=ref.hash, producer=PRODUCER),
        "dataSource": datasource_dataset.DatasourceDatasetFacet(name=store.root, uri=store_namespace(ref.payload_uri), producer=PRODUCER),
    }
    schema = _schema_facet(store, ref)
    if schema is not None:
        facets["schema"] = schema
    quality = _assertions(checks or [])
    if quality is not None:
        facets["dataQualityAssertions"] = quality
    stats = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
        rowCount=manifest.get("rows"), size=_size(store, ref), fileCount=len(manifest.get("files") or {}) or 1, producer=PRODUCER
    )
    return OutputDataset(namespace=store_namespace(store.root), name=_dataset_name(manifest["asset"], manifest.get("partition")),
                         facets=facets, outputFacets={"outputStatistics": stats})  # fmt: skip


def input_datasets(store: ArtifactStore, manifest: dict) -> list[InputDataset]:
    """The artifact's inputs, each with the version (content hash) it was computed from."""
    from retriever_forge.provenance import resolve

    out = []
    for name, up in sorted((manifest.get("upstream") or {}).items()):
        try:
            _, um = resolve(store, up["hash"])
        except KeyError:
            um = {"asset": name, "partition": manifest.get("partition")}
        out.append(InputDataset(
            namespace=store_namespace(store.root), name=_dataset_name(um.get("asset") or name, um.get("partition")),
            facets={"version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=up["hash"], producer=PRODUCER)}))  # fmt: skip
    return out


def start_event(store_root: str, asset: str, partition: str | None, dagster_run_id: str | None, *, inputs: list[str] = (),
                event_time: str | None = None) -> RunEvent:  # fmt: skip
    """The START of one materialization (inputs by asset name, before their versions are known)."""
    return RunEvent(
        eventType=RunState.START, eventTime=_time(event_time), producer=PRODUCER,
        run=Run(runId=openlineage_run_id(dagster_run_id, asset, partition), facets=_run_facets({}, dagster_run_id)),
        job=_job(asset),
        inputs=[InputDataset(namespace=store_namespace(store_root), name=_dataset_name(i, partition)) for i in inputs],
        outputs=[OutputDataset(namespace=store_namespace(store_root), name=_dataset_name(asset, partition))],
    )  # fmt: skip


def complete_event(store: ArtifactStore, ref: ArtifactRef, manifest: dict, checks: list[dict] | None = None) -> RunEvent:
    """The COMPLETE of the materialization that stored ``ref`` (facts from its manifest)."""
    asset, partition, run_id = manifest["asset"], manifest.get("partition"), manifest.get("run_id")
    return RunEvent(
        eventType=RunState.COMPLETE, eventTime=_time(manifest.get("finished_at")), producer=PRODUCER,
        run=Run(runId=openlineage_run_id(run_id, asset, partition), facets=_run_facets(manifest, run_id)),
        job=_job(asset, manifest), inputs=input_datasets(store, manifest), outputs=[output_dataset(store, ref, manifest, checks)],
    )  # fmt: skip


def fail_event(store_root: str, asset: str, partition: str | None, dagster_run_id: str | None, error: BaseException | str,
               stack_trace: str | None = None) -> RunEvent:  # fmt: skip
    """The FAIL of one materialization, with the error message (and stack trace when given)."""
    facets = _run_facets({}, dagster_run_id)
    facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
        message=str(error)[:4000] or type(error).__name__, programmingLanguage="python", stackTrace=stack_trace, producer=PRODUCER
    )
    return RunEvent(
        eventType=RunState.FAIL, eventTime=_time(None), producer=PRODUCER,
        run=Run(runId=openlineage_run_id(dagster_run_id, asset, partition), facets=facets), job=_job(asset),
        outputs=[OutputDataset(namespace=store_namespace(store_root), name=_dataset_name(asset, partition))],
    )  # fmt: skip


def artifact_events(store: ArtifactStore, ref: ArtifactRef, manifest: dict, checks: list[dict] | None = None) -> list[RunEvent]:
    """START and COMPLETE of a stored artifact, from its manifest (``lineage export``)."""
    inputs = [(u.get("asset") if isinstance(u, dict) and u.get("asset") else name) for name, u in (manifest.get("upstream") or {}).items()]
    start = start_event(store.root, manifest["asset"], manifest.get("partition"), manifest.get("run_id"), inputs=sorted(inputs),
                        event_time=manifest.get("started_at") or manifest.get("finished_at"))  # fmt: skip
    return [start, complete_event(store, ref, manifest, checks)]


def event_json(event: RunEvent) -> str:
    """One event as the JSON line OpenLineage transports write."""
    from openlineage.client.serde import Serde

    return Serde.to_json(event)


# --------------------------------------------------------------------------- emission


def emission_configured() -> bool:
    """Whether the environment asks for OpenLineage events (see the module docstring)."""
    if os.environ.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true":
        return False
    return bool(os.environ.get("OPENLINEAGE_URL") or os.environ.get("OPENLINEAGE_CONFIG")
                or any(k.startswith("OPENLINEAGE__TRANSPORT") for k in os.environ) or Path("openlineage.yml").exists())  # fmt: skip


def emit(events: list[RunEvent]) -> int:
    """Send events with the configured OpenLineage client; returns how many were sent.

    Lineage must never fail a materialization: a transport error is logged and counted out.
    """
    if not events or not emission_configured():
        return 0
    from openlineage.client import OpenLineageClient

    sent = 0
    try:
        client = OpenLineageClient()
        for event in events:
            client.emit(event)
            sent += 1
    except Exception as e:  # noqa: BLE001 - lineage is best effort (see docstring)
        log.warning("OpenLineage emission failed after %d of %d events: %s", sent, len(events), e)
    return sent
