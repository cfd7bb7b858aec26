"""OpenLineage events validate against the OpenLineage JSON schema (vendored, offline) and the
custom facets against their own schema; the file transport writes them as JSON lines."""

import json
from pathlib import Path

import jsonschema
import polars as pl
import pytest
from referencing import Registry, Resource

from retriever_forge.artifacts import ArtifactStore
from retriever_forge.openlineage_events import (
    FACETS_SCHEMA_FILE,
    artifact_events,
    emission_configured,
    emit,
    event_json,
    fail_event,
    openlineage_run_id,
)
from retriever_forge.provenance import build_manifest

SPEC = json.loads((Path(__file__).parent / "openlineage" / "OpenLineage-2-0-2.json").read_text())
FACETS = json.loads(FACETS_SCHEMA_FILE.read_text())
_REGISTRY = Registry().with_resources([(SPEC["$id"], Resource.from_contents(SPEC)), (FACETS["$id"], Resource.from_contents(FACETS))])
CUSTOM = {
    "retrieverForge_models": "ModelsRunFacet",
    "retrieverForge_prompts": "PromptsRunFacet",
    "retrieverForge_provenance": "ProvenanceRunFacet",
}


def validate_event(event: dict) -> None:
    """The event against the core schema, and each custom run facet against its definition."""
    jsonschema.Draft202012Validator(SPEC, registry=_REGISTRY, format_checker=jsonschema.FormatChecker()).validate(event)
    for key, facet in (event["run"].get("facets") or {}).items():
        if key.startswith("retrieverForge_"):
            assert facet["_schemaURL"].endswith(CUSTOM[key])
            jsonschema.Draft202012Validator({"$ref": f"{FACETS['$id']}#/$defs/{CUSTOM[key]}"}, registry=_REGISTRY).validate(facet)


@pytest.fixture
def artifacts(tmp_path):
    store = ArtifactStore(tmp_path / "forge")
    corpus = store.put_table(pl.DataFrame({"doc_id": ["d1"], "title": [""], "text": ["alpha"]}), "corpus")
    cm = build_manifest(corpus, asset="corpus", upstream={}, partition="demo", run_id="6c2b8d2e-1f8e-4f43-9a51-b0e0a7d0c001",
                        rows=1, started_at="2026-01-01T00:00:00+00:00")  # fmt: skip
    store.write_manifest(corpus, cm)
    queries = store.put_table(pl.DataFrame({"query_id": ["q1"], "text": ["what is alpha"]}), "synthetic_queries")
    qm = build_manifest(queries, asset="synthetic_queries", upstream={"corpus": corpus}, partition="demo", run_id=cm["run_id"], rows=1,
                        config={"temperature": 0.0}, seeds={"seed": 0}, sampling={"temperature": 0.0},
                        models={"generator": {"id": "smollm2", "weights_hash": "a" * 64}},
                        prompts={"question": {"id": "queries/q", "hash": "b" * 64, "format": "completion", "text": "Q: {passage}"}},
                        started_at="2026-01-01T00:00:01+00:00")  # fmt: skip
    store.write_manifest(queries, qm)
    return store, (corpus, cm), (queries, qm)


def test_events_of_an_artifact_validate_and_carry_lineage_facets(artifacts):
    store, (corpus, _), (queries, qm) = artifacts
    checks = [{"asset": "synthetic_queries", "check_name": "enough_queries", "passed": False, "severity": "ERROR", "run_id": qm["run_id"],
               "metadata": {"kept": 0}}]  # fmt: skip
    start, complete = (json.loads(event_json(e)) for e in artifact_events(store, queries, qm, checks))
    for e in (start, complete):
        validate_event(e)
    assert start["eventType"] == "START" and complete["eventType"] == "COMPLETE"
    assert start["run"]["runId"] == complete["run"]["runId"] == openlineage_run_id(qm["run_id"], "synthetic_queries", "demo")
    (out,) = complete["outputs"]
    assert out["namespace"] == f"file://{Path(store.root).resolve()}" and out["name"] == "synthetic_queries/demo"
    assert [f["name"] for f in out["facets"]["schema"]["fields"]] == ["query_id", "text"]
    assert out["facets"]["version"]["datasetVersion"] == queries.hash
    assert out["facets"]["dataQualityAssertions"]["assertions"][0] == {
        "assertion": "enough_queries", "success": False, "severity": "error", "name": "enough_queries", "actual": '{"kept": 0}', "params": {}}  # fmt: skip
    assert out["outputFacets"]["outputStatistics"]["rowCount"] == 1
    assert [(i["name"], i["facets"]["version"]["datasetVersion"]) for i in complete["inputs"]] == [("corpus/demo", corpus.hash)]
    facets = complete["run"]["facets"]
    assert facets["parent"]["run"]["runId"] == qm["run_id"]
    assert facets["retrieverForge_models"]["models"]["generator"]["weights_hash"] == "a" * 64
    assert facets["retrieverForge_prompts"]["prompts"]["question"]["text"] == "Q: {passage}"
    assert facets["retrieverForge_provenance"]["contentHash"] == queries.hash
    assert complete["job"]["facets"]["sourceCodeLocation"]["type"] == "git"


def test_fail_event_validates_with_the_error():
    event = json.loads(event_json(fail_event("/tmp/forge", "fine_tuned_encoder", "demo", "6c2b8d2e-1f8e-4f43-9a51-b0e0a7d0c001",
                                             RuntimeError("loss is nan"), "Traceback ...")))  # fmt: skip
    validate_event(event)
    assert event["eventType"] == "FAIL" and event["run"]["facets"]["errorMessage"]["message"] == "loss is nan"


def test_schema_rejects_a_broken_event(artifacts):
    store, _, (queries, qm) = artifacts
    event = json.loads(event_json(artifact_events(store, queries, qm)[1]))
    del event["run"]["runId"]
    with pytest.raises(jsonschema.ValidationError):
        validate_event(event)


def test_file_transport_writes_json_lines_only_when_configured(artifacts, tmp_path, monkeypatch):
    store, _, (queries, qm) = artifacts
    for k in [k for k in __import__("os").environ if k.startswith("OPENLINEAGE")]:
        monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)
    assert not emission_configured() and emit(artifact_events(store, queries, qm)) == 0
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(path))
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    assert emit(artifact_events(store, queries, qm)) == 2
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["eventType"] for e in lines] == ["START", "COMPLETE"]
    for e in lines:
        validate_event(e)


def test_lineage_export_command(artifacts, tmp_path, monkeypatch):
    from retriever_forge.orchestration.cli import main

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    store, _, (queries, _) = artifacts
    out = tmp_path / "export.jsonl"
    assert main(["lineage", "export", queries.hash[:12], "--format", "openlineage", "--out", str(out), "--home", store.root]) == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(e["eventType"], e["job"]["name"]) for e in events] == [
        ("START", "corpus"), ("COMPLETE", "corpus"), ("START", "synthetic_queries"), ("COMPLETE", "synthetic_queries")]  # fmt: skip
    for e in events:
        validate_event(e)
