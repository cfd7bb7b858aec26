"""A full disk (ENOSPC) in the middle of a write: the write fails loudly, nothing half-written
becomes visible, and everything stored before stays intact and verifiable."""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

import polars as pl
import pytest

from retriever_forge import training
from retriever_forge.artifacts import ArtifactStore
from retriever_forge.llm import CachedLLM, SamplingParams
from retriever_forge.provenance import build_manifest, verify
from tests.faults import helpers

pytestmark = pytest.mark.faults


def _enospc():
    return OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def store(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    earlier = store.put_table(pl.DataFrame({"x": list(range(1000))}), "corpus")
    store.write_manifest(earlier, build_manifest(earlier, asset="corpus", upstream={}))
    return store


def _assert_only_the_earlier_artifact(store: ArtifactStore) -> None:
    assert [(r["kind"], r["ok"]) for r in verify(store)] == [("corpus", True)]
    assert store.partial_writes() == []
    root = Path(store.root) / "artifacts"
    files = {p.relative_to(root).parts[0] for p in root.rglob("*") if p.is_file()}
    assert files == {"corpus"}  # not one byte of the failed write remains, hidden or not
    artifact_dirs = {p.relative_to(root).parts[0] for p in root.rglob("*") if p.is_dir() and len(p.name) == 64}
    assert artifact_dirs == {"corpus"}  # the failed write's (empty) artifact folder is gone too


def test_table_write_hitting_a_full_disk_publishes_nothing(store, monkeypatch):
    real_open = store.fs.open

    class HalfThenFull:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise _enospc()

    def open_(path, mode="rb", **kwargs):
        f = real_open(path, mode, **kwargs)
        return HalfThenFull(f) if "w" in mode and str(path).endswith(".tmp") else f

    monkeypatch.setattr(store.fs, "open", open_)
    table = pl.DataFrame({"doc_id": [f"d{i}" for i in range(500)], "text": ["some passage text"] * 500})
    with pytest.raises(OSError) as info:
        store.put_table(table, "synthetic_queries")
    assert info.value.errno == errno.ENOSPC
    assert any("nothing was stored" in note for note in info.value.__notes__)
    _assert_only_the_earlier_artifact(store)
    monkeypatch.undo()  # space freed: the same write now succeeds, with the content's own hash
    ref = store.put_table(table, "synthetic_queries")
    assert store.rehash(ref) == ref.hash and store.read_table(ref).equals(table)


def test_folder_write_hitting_a_full_disk_publishes_nothing(store, tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    for i in range(3):
        (model / f"part-{i}.safetensors").write_bytes(bytes([i]) * 10_000)
    real_copytree, copied = shutil.copytree, []

    def copy_then_full(src, dst, **kwargs):
        if copied:
            raise _enospc()
        copied.append(src)
        return shutil.copy2(src, dst)

    monkeypatch.setattr(shutil, "copytree", lambda src, dst, **kw: real_copytree(src, dst, copy_function=copy_then_full, **kw))
    with pytest.raises(shutil.Error, match="No space left on device"):  # copytree gathers per-file errors
        store.put_folder(model, "fine_tuned_encoder")
    _assert_only_the_earlier_artifact(store)
    monkeypatch.undo()
    ref = store.put_folder(model, "fine_tuned_encoder")
    assert store.rehash(ref) == ref.hash


def test_manifest_write_hitting_a_full_disk_leaves_the_payload_and_no_manifest(store, monkeypatch):
    ref = store.put_json({"ndcg@10": 0.5}, "benchmark_scores")
    real_open = store.fs.open

    def open_(path, mode="rb", **kwargs):
        if "w" in mode and ".manifest.json." in str(path):
            real_open(path, mode, **kwargs).close()  # the temporary file exists, then the disk is full
            raise _enospc()
        return real_open(path, mode, **kwargs)

    monkeypatch.setattr(store.fs, "open", open_)
    with pytest.raises(OSError, match="No space left"):
        store.write_manifest(ref, build_manifest(ref, asset="benchmark_scores", upstream={}))
    assert store.read_manifest(ref) is None and store.partial_writes() == []
    assert store.read_json(ref) == {"ndcg@10": 0.5}
    monkeypatch.undo()
    assert store.write_manifest(ref, build_manifest(ref, asset="benchmark_scores", upstream={}))
    assert all(r["ok"] for r in verify(store))


class VerboseLLM(helpers.HashLLM):
    """Answers of ~8 KB, so each batch needs fresh database pages."""

    @staticmethod
    def answer(prompt: str) -> str:
        return (helpers.HashLLM.answer(prompt) + " ") * 300

    def generate(self, prompts, params):
        return [
            g.__class__(self.answer(p), g.prompt_tokens, g.completion_tokens)
            for g, p in zip(super().generate(prompts, params), prompts, strict=True)
        ]


def test_llm_cache_on_a_full_disk_keeps_committed_batches(tmp_path):
    """SQLite's max_page_count makes a real "database or disk is full" error at a chosen size."""
    path = tmp_path / "cache.sqlite"
    prompts = [f"Write a query for passage {i}." for i in range(12)]
    params = SamplingParams(max_new_tokens=8)
    llm = CachedLLM(VerboseLLM(), path, batch_size=3)
    llm.generate(prompts[:3], params)
    pages = llm._conn.execute("PRAGMA page_count").fetchone()[0]
    llm._conn.execute(f"PRAGMA max_page_count = {pages + 8}")  # room for one more batch, then the disk is full
    with pytest.raises(sqlite3.OperationalError, match="full"):
        llm.generate(prompts, params)
    llm.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
    assert 3 < stored < len(prompts), "the groups committed before the disk filled are kept, the one in flight is not"
    retry_backend = VerboseLLM()
    with CachedLLM(retry_backend, path, batch_size=3) as again:  # space freed
        out = again.generate(prompts, params)
        assert again.stats["hits"] == stored and again.stats["misses"] == len(prompts) - stored
    assert [g.text for g in out] == [VerboseLLM.answer(p) for p in prompts]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    from tests.test_training import _tiny_model

    return _tiny_model(tmp_path_factory.mktemp("tiny"))


def test_checkpoint_write_hitting_a_full_disk_keeps_the_last_good_checkpoint(tiny_model, tmp_path, monkeypatch):
    reference, straight = helpers.run_training(tiny_model, tmp_path / "straight", tmp_path / "straight" / "store")
    real_save, saves = training.torch.save, []

    def save(obj, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 4:  # the second checkpoint (step 4): its first file hits the full disk
            raise _enospc()
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(training.torch, "save", save)
    with pytest.raises(OSError, match="No space left"):
        helpers.run_training(tiny_model, tmp_path / "full", tmp_path / "full" / "store")
    monkeypatch.undo()
    ckpt = tmp_path / "full" / "training" / "checkpoints"
    assert [p.name for p in ckpt.glob("step-*")] == ["step-2"]
    assert not (tmp_path / "full" / "store").exists() or not any((tmp_path / "full" / "store").rglob("*.safetensors"))
    ref, resumed = helpers.run_training(tiny_model, tmp_path / "full", tmp_path / "full" / "store")
    assert resumed.resumed_from_step == 2 and ref.hash == reference.hash
    assert resumed.weights_hash == straight.weights_hash
