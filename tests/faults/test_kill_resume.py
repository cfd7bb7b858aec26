"""Process faults: a stage SIGKILLed mid-way, then run again, publishes exactly the artifact an
uninterrupted run with the same seed publishes (same content hash), and the kill left no
corrupt or half-written artifact visible in the store."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from retriever_forge.artifacts import ArtifactStore
from retriever_forge.hashing import hash_file
from retriever_forge.indexing import load_corpus_index
from retriever_forge.provenance import verify
from tests.faults import helpers

pytestmark = pytest.mark.faults


def _assert_nothing_published(store_root: Path) -> ArtifactStore:
    """After the kill: no payload is visible; only hidden temporary entries may remain."""
    store = ArtifactStore(store_root)
    artifacts = Path(store_root) / "artifacts"
    visible = [p for p in artifacts.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(artifacts).parts)]
    assert visible == [], visible
    return store


def _assert_clean_store(store: ArtifactStore, ref) -> None:
    assert store.rehash(ref) == ref.hash
    leftovers = store.partial_writes()
    assert store.sweep_partial_writes(min_age_s=3600) == []  # fresh ones may belong to a live writer: kept
    assert store.sweep_partial_writes(min_age_s=0) == leftovers and store.partial_writes() == []
    assert store.rehash(ref) == ref.hash


def test_generation_killed_mid_run_resumes_from_the_cache(tmp_path):
    reference, _ = helpers.run_generation(tmp_path / "straight", tmp_path / "straight" / "store", helpers.HashLLM())
    work = tmp_path / "killed"
    work.mkdir()
    helpers.kill_child_at_marker("generation", work)
    _assert_nothing_published(work / "store")
    rerun_llm = helpers.HashLLM()
    ref, queries = helpers.run_generation(work, work / "store", rerun_llm)
    assert rerun_llm.prompts_seen == helpers.CORPUS.height - 6  # two committed batches of 3 were not asked again
    assert ref.hash == reference.hash
    store = ArtifactStore(work / "store")
    _assert_clean_store(store, ref)
    assert (queries["dropped_by"] == "unparseable").sum() > 0  # empty outputs are counted and dropped, not fatal


@pytest.mark.parametrize("where", ["search", "write"])
def test_mining_killed_mid_search_or_mid_write_leaves_no_artifact_and_reruns_identically(tmp_path, where):
    reference = helpers.run_mining(tmp_path / "straight")
    work = tmp_path / "killed"
    work.mkdir()
    helpers.kill_child_at_marker("mining", work, where)
    store = _assert_nothing_published(work / "store")
    assert list(store.iter_refs()) == []
    if where == "write":  # the half-written bytes sit under a hidden temporary name only
        (partial,) = store.partial_writes()
        assert Path(partial).name.startswith(".data.parquet.")
        assert not store.exists(store._ref(reference.kind, reference.hash, reference.payload, reference.format))
    ref = helpers.run_mining(work / "store")
    assert ref.hash == reference.hash
    assert store.read_table(ref)["query_id"].n_unique() == helpers.MINING_QUERIES
    _assert_clean_store(store, ref)


def test_index_build_killed_mid_copy_leaves_no_artifact_and_reruns_identically(tmp_path):
    reference = helpers.run_indexing(tmp_path / "straight", tmp_path / "straight" / "store")
    work = tmp_path / "killed"
    work.mkdir()
    helpers.kill_child_at_marker("indexing", work)
    store = _assert_nothing_published(work / "store")
    (partial,) = store.partial_writes()
    assert Path(partial).name.startswith(".index.")
    ref = helpers.run_indexing(work, work / "store")
    assert ref.hash == reference.hash
    index = load_corpus_index(store.local_path(ref))
    assert index.doc_ids == helpers.CORPUS["doc_id"].to_list() and index.index.ntotal == helpers.CORPUS.height
    _assert_clean_store(store, ref)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    from tests.test_training import _tiny_model

    return _tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.mark.slow  # ~25 s on a busy 2-core CPU: a child process imports torch and sentence-transformers
def test_training_killed_mid_epoch_resumes_from_its_last_checkpoint(tmp_path, tiny_model):
    reference, straight = helpers.run_training(tiny_model, tmp_path / "straight", tmp_path / "straight" / "store")
    work = tmp_path / "killed"
    work.mkdir()
    helpers.kill_child_at_marker("training", work, tiny_model)
    _assert_nothing_published(work / "store")
    checkpoints = sorted(p.name for p in (work / "training" / "checkpoints").glob("step-*"))
    assert checkpoints == ["step-2", "step-4"]
    ref, resumed = helpers.run_training(tiny_model, work, work / "store")
    assert resumed.resumed_from_step == 4
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    assert resumed.weights_hash == straight.weights_hash
    assert ref.hash == reference.hash
    store = ArtifactStore(work / "store")
    _assert_clean_store(store, ref)
    assert hash_file(store.local_path(ref) / "model.safetensors") == hash_file(straight.model_dir / "model.safetensors")


def test_verify_passes_after_every_kill_and_rerun(tmp_path, capsys):
    """The manifests written after a rerun describe artifacts whose bytes match their hashes;
    ``retriever-forge verify`` reports the killed writer's leftover as unfinished, not corrupt."""
    from retriever_forge.orchestration.cli import main
    from retriever_forge.provenance import build_manifest

    work = tmp_path / "killed"
    work.mkdir()
    helpers.kill_child_at_marker("mining", work, "write")
    store = ArtifactStore(work / "store")
    ref = helpers.run_mining(work / "store")
    store.write_manifest(ref, build_manifest(ref, asset="hard_negatives", upstream={}))
    assert [r["ok"] for r in verify(store)] == [True]
    assert isinstance(store.read_table(ref), pl.DataFrame)
    assert main(["verify", "--home", str(work / "store")]) == 0
    out = capsys.readouterr().out
    assert "1 artifacts ok, 0 corrupted or missing" in out and "1 unfinished writes" in out
