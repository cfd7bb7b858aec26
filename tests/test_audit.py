"""The audit report on a tiny hand-built lineage: verification names the artifact and the file."""

import re
import shutil

import polars as pl
import pytest

from retriever_forge.artifacts import ArtifactStore
from retriever_forge.audit import audit_html, audit_markdown, build_audit, config_rows
from retriever_forge.provenance import build_manifest


@pytest.fixture
def lineage(tmp_path):
    """corpus -> synthetic_queries -> model folder (the shapes the real assets write)."""
    store = ArtifactStore(tmp_path / "forge")
    corpus = store.put_table(
        pl.DataFrame({"doc_id": ["d1", "d2"], "title": ["", "T"], "text": ["alpha passage", "beta passage"]}), "corpus"
    )
    store.write_manifest(corpus, build_manifest(corpus, asset="corpus", upstream={}, partition="tiny", rows=2))
    queries = store.put_table(pl.DataFrame({
        "query_id": ["q1", "q2"], "doc_id": ["d1", "d2"], "text": ["what is alpha", ""], "style": ["question"] * 2,
        "raw_output": ["what is alpha", "???"], "dropped_by": [None, "unparseable"], "split": ["train", "train"],
    }), "synthetic_queries")  # fmt: skip
    prompt = {"id": "queries/x", "hash": "ab" * 32, "format": "chat", "text": "Write a query for: {passage}\n"}
    store.write_manifest(queries, build_manifest(
        queries, asset="synthetic_queries", upstream={"corpus": corpus}, partition="tiny", rows=2, run_id="run-1",
        config={"temperature": 0.7, "seed": 0}, prompts={"question": prompt}, seeds={"seed": 0},
        models={"generator": {"id": "tiny-llm", "weights_hash": "cd" * 32}}))  # fmt: skip
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    model = store.put_folder(folder, "fine_tuned_encoder")
    store.write_manifest(
        model, build_manifest(model, asset="fine_tuned_encoder", upstream={"synthetic_queries": queries}, partition="tiny")
    )
    return store, corpus, queries, model


def test_clean_lineage_verifies_and_shows_prompts_samples_and_changed_config(lineage):
    store, corpus, queries, model = lineage
    report = build_audit(store, model.hash, config_defaults={"synthetic_queries": {"temperature": 0.0, "seed": 0}})
    assert report["ok"] and [a["asset"] for a in report["artifacts"]] == ["corpus", "synthetic_queries", "fine_tuned_encoder"]
    sq = next(a for a in report["artifacts"] if a["asset"] == "synthetic_queries")
    assert [(r["key"], r["changed"]) for r in sq["config"]] == [("seed", False), ("temperature", True)]
    assert sq["prompts"]["question"]["text"].startswith("Write a query")
    assert report["samples"]["synthetic_queries"]["counts"] == {"kept": 1, "unparseable": 1}
    page = audit_html(report)
    assert page.count("✔ verified") == 3 * 3 and "✘" not in page and "Write a query for: {passage}" in page and "alpha passage" in page
    assert "no Dagster instance was reachable" in page  # said plainly when there are no check results
    assert not re.search(r"<(link|script|img)\b|src=|@import", page)  # self-contained
    assert "graph LR" in audit_markdown(report)


def test_one_flipped_byte_in_an_upstream_table_names_the_artifact_and_file(lineage):
    store, corpus, _, model = lineage
    path = store.local_path(corpus)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = build_audit(store, model.hash)
    assert not report["ok"]
    assert [(f["asset"], f["problems"][0]["file"]) for f in report["failures"]] == [("corpus", str(path))]
    page = audit_html(report)
    assert "VERIFICATION FAILED for 1 artifact" in page and str(path) in page


def test_a_changed_file_inside_a_model_folder_is_named(lineage):
    store, _, _, model = lineage
    weights = store.local_path(model) / "model.safetensors"
    weights.write_bytes(b"\1" + weights.read_bytes()[1:])
    (store.local_path(model) / "extra.txt").write_text("x")
    failure = build_audit(store, model.hash)["failures"][0]
    assert failure["asset"] == "fine_tuned_encoder"
    assert {(p["issue"], p["file"].rsplit("/", 1)[1]) for p in failure["problems"]} == {
        ("changed", "model.safetensors"),
        ("unexpected", "extra.txt"),
    }


def test_audit_command_exits_non_zero_on_a_corrupted_upstream_and_names_it(lineage, tmp_path, capsys, monkeypatch):
    from retriever_forge.orchestration.cli import main

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    store, corpus, _, model = lineage
    out = tmp_path / "audit.html"
    assert main(["audit", model.hash[:12], "--home", store.root, "--out", str(out)]) == 0
    path = store.local_path(corpus)
    path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 0xFF]))
    assert main(["audit", model.hash[:12], "--home", store.root, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"VERIFICATION FAILED corpus {corpus.hash[:16]}: changed {path}" in err
    assert str(path) in out.read_text()
    assert main(["audit", model.hash[:12], "--home", store.root, "--format", "md"]) == 1
    assert "VERIFICATION FAILED" in capsys.readouterr().out


def test_config_rows_without_known_defaults_are_not_marked():
    assert config_rows({"dataset": {"name": "x"}}, None) == [
        {"key": "dataset.name", "value": "x", "default": None, "changed": False, "known": False}
    ]


@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="needs Debian chromium + chromium-driver (.ci/run installs them)",
)
def test_the_report_renders_in_a_real_browser_and_shows_a_flipped_byte(lineage, tmp_path):
    """Headless chromium lays the page out: the lineage graph's nodes, the verified marks, the
    prompt and the samples are visible; after a flipped byte the mismatch is what it shows."""
    pytest.importorskip("selenium")
    from scripts.audit_in_browser import render

    store, corpus, _, model = lineage
    clean = tmp_path / "clean.html"
    clean.write_text(audit_html(build_audit(store, model.hash)))
    seen = render(clean, tmp_path / "clean.png")
    assert seen["graph"]["width"] > 100 and {"corpus", "synthetic_queries", "fine_tuned_encoder"} <= set(seen["graph"]["nodes"])
    assert seen["verified"] >= 3 and seen["mismatches"] == 0 and seen["prompts"] >= 1
    assert all(seen["sections"][h] for h in ("Lineage", "Asset checks", "Samples", "Artifacts"))
    assert any(t.startswith("synthetic_queries") or "queries" in t.lower() for t in seen["sample_tables"]), seen["sample_tables"]
    assert (tmp_path / "clean.png").stat().st_size > 10_000

    path = store.local_path(corpus)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    flipped = tmp_path / "flipped.html"
    flipped.write_text(audit_html(build_audit(store, model.hash)))
    seen = render(flipped)
    assert seen["mismatches"] >= 1 and "VERIFICATION FAILED for 1 artifact" in seen["banner"]
