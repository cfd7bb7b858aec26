"""The audit trail on real runs of the whole graph (the tiny demo): two runs that differ in one
prompt line and one config value, OpenLineage events written by the file transport during the
first, then audit, diff, the model card and the exported events checked against them."""

import json
import os

import dagster as dg
import pytest

from retriever_forge.artifacts import ArtifactStore, read_pointer
from retriever_forge.orchestration.assets import ALL_ASSETS
from retriever_forge.orchestration.assets.common import sync_dataset_partitions
from retriever_forge.orchestration.resources import ArtifactRefIOManager, ArtifactStoreResource, EncoderResource, LLMResource
from retriever_forge.prompts import PROMPTS_DIR
from tests.test_openlineage_events import validate_event

PROMPT_LINE = ("Relevant Query: who built the first nuclear weapons", "Relevant Query: what was the manhattan project")


def _resources(home):
    return {"artifact_store": ArtifactStoreResource(root=str(home), work_dir=str(home / "work")), "artifact_io": ArtifactRefIOManager(root=str(home)),
            "llm": LLMResource(batch_size=8), "encoder": EncoderResource(batch_size=32)}  # fmt: skip


def _config(template: str, negatives: int) -> dict:
    return {"ops": {
        # Question style only: the edited prompt line reaches every query, the held-out test ones too.
        "synthetic_queries": {"config": {"documents_to_sample": 8, "styles": ["question"], "round_trip_k": 50,
                                         "synthetic_test_fraction": 0.34, "templates": {"question": template}}},
        "relevance_judgments": {"config": {"candidates_per_query": 2, "calibration_queries": 4}},
        "hard_negatives": {"config": {"rank_start": 3, "rank_end": 30, "negatives_per_query": negatives}},
        "fine_tuned_encoder": {"config": {"epochs": 1, "batch_size": 4}},
    }}  # fmt: skip


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    home = tmp_path_factory.mktemp("forge")
    template = home / "question.txt"
    template.write_text((PROMPTS_DIR / "queries" / "inpars_question_v1.txt").read_text())
    instance = dg.DagsterInstance.ephemeral()
    sync_dataset_partitions(instance)
    events = home / "openlineage.jsonl"
    env = {"OPENLINEAGE__TRANSPORT__TYPE": "file", "OPENLINEAGE__TRANSPORT__LOG_FILE_PATH": str(events),
           "OPENLINEAGE__TRANSPORT__APPEND": "true"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        first = dg.materialize(
            ALL_ASSETS, partition_key="demo", resources=_resources(home), run_config=_config(str(template), 2), instance=instance
        )
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert first.success
    scores_a = read_pointer(home, "benchmark_scores", "demo")
    model_a = read_pointer(home, "fine_tuned_encoder", "demo")
    assert PROMPT_LINE[0] in template.read_text()
    template.write_text(template.read_text().replace(*PROMPT_LINE))  # the same file, one line edited
    second = dg.materialize(
        ALL_ASSETS, partition_key="demo", resources=_resources(home), run_config=_config(str(template), 1), instance=instance
    )
    assert second.success
    return {"home": home, "instance": instance, "events": events, "runs": (first.run_id, second.run_id),
            "scores": (scores_a, read_pointer(home, "benchmark_scores", "demo")), "model": model_a,
            "models": (model_a, read_pointer(home, "fine_tuned_encoder", "demo"))}  # fmt: skip


@pytest.mark.slow
def test_diff_of_the_two_runs_names_exactly_the_prompt_line_and_the_config_value(two_runs):
    from retriever_forge.lineage_diff import diff_lineages, diff_text

    a, b = two_runs["scores"]
    if a.hash == b.hash:
        # SmolLM2 may write the same held-out test queries under both prompts, and a model that keeps
        # the base weights scores the same: then the scores are one artifact, and the two changes are
        # named where the lineages do differ, at the model trained on both runs' examples.
        a, b = two_runs["models"]
    d = diff_lineages(ArtifactStore(two_runs["home"]), a.hash, b.hash)
    assert [(c["kind"], c.get("key") or c.get("role"), c["assets"]) for c in d["summary"]] == [
        ("prompt", "question", ["synthetic_queries"]), ("config", "negatives_per_query", ["hard_negatives"])]  # fmt: skip
    prompt, config = d["summary"]
    assert f"-{PROMPT_LINE[0]}" in prompt["diff"] and f"+{PROMPT_LINE[1]}" in prompt["diff"]
    assert sum(ln.startswith(("-", "+")) and not ln.startswith(("---", "+++")) for ln in prompt["diff"].splitlines()) == 2
    assert (config["old"], config["new"]) == (2, 1)
    assert "training_examples" in {c["asset"] for c in d["consequences"]}
    if d["asset"] == "benchmark_scores":
        assert {r["system"] for r in d["score_deltas"]} == {"bm25", "base", "fine-tuned", "hybrid", "hybrid-base"}
        assert all(r["delta"] == round(r["b"] - r["a"], 4) for r in d["score_deltas"])
    assert "config negatives_per_query: 2 → 1" in diff_text(d)


@pytest.mark.slow
def test_audit_of_the_scores_then_a_flipped_upstream_byte(two_runs, tmp_path, monkeypatch):
    from retriever_forge.audit import audit_html, build_audit
    from retriever_forge.orchestration.assets.run_records import asset_check_results, config_defaults
    from retriever_forge.orchestration.cli import main

    home = two_runs["home"]
    store = ArtifactStore(home)
    checks = asset_check_results(two_runs["instance"], set(two_runs["runs"]))
    report = build_audit(store, two_runs["scores"][1].hash, config_defaults=config_defaults(), check_results=checks)
    assert report["ok"] and len(report["artifacts"]) == 10
    assert {c["check_name"] for c in report["checks"]} >= {"corpus_schema", "enough_queries", "examples_valid", "fine_tuned_not_worse"}
    assert [c["passed"] for c in report["checks"]] == sorted(c["passed"] for c in report["checks"])  # failures and warnings first
    sq = next(a for a in report["artifacts"] if a["asset"] == "synthetic_queries")
    # Scores are content-addressed: when both runs scored the same (see the diff test above), the
    # second run's pointer names the first run's artifact, whose lineage saw the original line.
    same_scores = two_runs["scores"][0].hash == two_runs["scores"][1].hash
    assert PROMPT_LINE[0 if same_scores else 1] in sq["prompts"]["question"]["text"]
    assert {r["key"] for r in sq["config"] if r["changed"]} >= {"documents_to_sample", "templates.question"}
    assert report["scoreboard"] and {r["system"] for r in report["scoreboard"]} == {"bm25", "base", "fine-tuned", "hybrid", "hybrid-base"}
    page = audit_html(report)
    assert "Generated queries, their source passages" in page and "Mined negatives" in page and "enough_queries" in page

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    out = tmp_path / "audit.html"
    assert main(["audit", "benchmark_scores", "demo", "--home", str(home), "--out", str(out)]) == 0
    # the judgments in the audited lineage (when both runs scored the same, the first run's, not the latest pointer's)
    judgments = next(a for a in report["artifacts"] if a["asset"] == "relevance_judgments")
    path = store.local_path(next(r for r, _ in store.iter_refs() if r.hash == judgments["hash"]))
    original = path.read_bytes()
    try:
        path.write_bytes(original[:100] + bytes([original[100] ^ 0x01]) + original[101:])
        assert main(["audit", "benchmark_scores", "demo", "--home", str(home), "--out", str(out)]) == 1
        text = out.read_text()
        assert "VERIFICATION FAILED for 1 artifact" in text and str(path) in text
    finally:
        path.write_bytes(original)


@pytest.mark.slow
def test_published_model_folder_has_a_hub_model_card_and_still_loads(two_runs):
    from huggingface_hub import ModelCard
    from sentence_transformers import SentenceTransformer

    from retriever_forge.hashing import hash_file

    store = ArtifactStore(two_runs["home"])
    ref = two_runs["model"]
    folder = store.local_path(ref)
    card = ModelCard.load(str(folder / "README.md"))
    assert card.data.library_name == "sentence-transformers" and card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.pipeline_tag == "sentence-similarity" and card.data.datasets == ["demo"]
    manifest = store.read_manifest(ref)
    assert manifest["files"]["README.md"] == hash_file(folder / "README.md") == manifest["extra"]["training"]["model_card_hash"]
    training_examples = manifest["upstream"]["training_examples"]["hash"]
    assert (
        f"retriever-forge trace {training_examples[:16]}" in card.text
        and f"kept step: **{manifest['extra']['training']['best_step']}**" in card.text
    )
    assert SentenceTransformer(str(folder), device="cpu").encode(["hello"]).shape == (1, 384)


@pytest.mark.slow
def test_openlineage_events_written_during_the_run_validate(two_runs, tmp_path, monkeypatch):
    from retriever_forge.orchestration.cli import main

    events = [json.loads(line) for line in two_runs["events"].read_text().splitlines()]
    for e in events:
        validate_event(e)
    jobs = {"corpus", "eval_queries", "eval_qrels", "synthetic_queries", "relevance_judgments", "hard_negatives", "training_examples",
            "fine_tuned_encoder", "corpus_index", "benchmark_scores"}  # fmt: skip
    for kind in ("START", "COMPLETE"):
        assert sorted(e["job"]["name"] for e in events if e["eventType"] == kind) == sorted(jobs)
    starts = {e["job"]["name"]: e["run"]["runId"] for e in events if e["eventType"] == "START"}
    done = {e["job"]["name"]: e for e in events if e["eventType"] == "COMPLETE"}
    assert all(done[j]["run"]["runId"] == starts[j] for j in jobs)
    sq = done["synthetic_queries"]
    assert {i["name"] for i in sq["inputs"]} == {"corpus/demo", "eval_qrels/demo"}
    (out,) = sq["outputs"]
    assert {a["assertion"] for a in out["facets"]["dataQualityAssertions"]["assertions"]} == {"unparseable_share", "enough_queries"}
    assert "query_id" in {f["name"] for f in out["facets"]["schema"]["fields"]}
    assert sq["run"]["facets"]["retrieverForge_prompts"]["prompts"]["question"]["text"].count(PROMPT_LINE[0]) == 1
    assert sq["run"]["facets"]["parent"]["run"]["runId"] == two_runs["runs"][0]

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    export = tmp_path / "export.jsonl"
    assert main(["lineage", "export", "--home", str(two_runs["home"]), "--out", str(export)]) == 0
    exported = [json.loads(line) for line in export.read_text().splitlines()]
    for e in exported:
        validate_event(e)
    live_runs = {e["run"]["runId"] for e in events}
    assert live_runs <= {e["run"]["runId"] for e in exported}  # export names the same OpenLineage runs


@pytest.mark.slow
def test_model_card_command_writes_the_model_with_its_scoreboard(two_runs, tmp_path):
    from huggingface_hub import ModelCard
    from sentence_transformers import SentenceTransformer

    from retriever_forge.orchestration.cli import main

    out = tmp_path / "published"
    assert main(["model-card", "benchmark_scores", "demo", "--home", str(two_runs["home"]), "--out", str(out)]) == 0
    card = ModelCard.load(str(out / "README.md"))
    scores = two_runs["scores"][1].hash
    assert "| fine-tuned |" in card.text and "nDCG@10" in card.text and scores in card.text
    assert card.data.library_name == "sentence-transformers"
    assert SentenceTransformer(str(out), device="cpu").encode(["hello"]).shape == (1, 384)
    assert main(["model-card", "corpus", "demo", "--home", str(two_runs["home"]), "--out", str(tmp_path / "x")]) == 2
