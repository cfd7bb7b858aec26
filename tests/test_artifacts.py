from pathlib import Path

import polars as pl
import pytest

from retriever_forge.artifacts import ArtifactError, ArtifactStore
from retriever_forge.hashing import hash_file, hash_tree
from retriever_forge.provenance import build_manifest, trace, trace_markdown, verify


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(tmp_path / "store")


def test_same_content_is_stored_once_under_its_hash(store):
    df = pl.DataFrame({"doc_id": ["a", "b"], "text": ["x", "y"]})
    a, b = store.put_table(df, "corpus"), store.put_table(df.clone(), "corpus")
    assert a == b
    assert a.hash == hash_file(a.payload_uri)
    assert a.hash in a.uri


def test_different_content_gets_a_different_path_and_old_stays(store):
    a = store.put_table(pl.DataFrame({"x": [1]}), "t")
    b = store.put_table(pl.DataFrame({"x": [2]}), "t")
    assert a.uri != b.uri
    assert store.read_table(a)["x"].to_list() == [1]


def test_folders_are_hashed_by_content_and_skip_checkpoints(store, tmp_path):
    model = tmp_path / "model"
    (model / "checkpoints").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "checkpoints" / "state.json").write_text("{}")
    ref = store.put_folder(model, "fine_tuned_encoder")
    assert store.rehash(ref) == ref.hash
    assert not (store.local_path(ref) / "checkpoints").exists()


def test_manifest_is_written_once(store):
    ref = store.put_json({"a": 1}, "scores")
    assert store.write_manifest(ref, build_manifest(ref, asset="scores", upstream={}, run_id="r1"))
    assert not store.write_manifest(ref, build_manifest(ref, asset="scores", upstream={}, run_id="r2"))
    assert store.read_manifest(ref)["run_id"] == "r1"


def test_kind_and_hash_cannot_escape_the_root(store):
    with pytest.raises(ArtifactError):
        store._artifact_dir("../etc", "0" * 64)
    with pytest.raises(ArtifactError):
        store._artifact_dir("corpus", "../../x")


def test_trace_reaches_the_root_and_hashes_match(store):
    corpus = store.put_table(pl.DataFrame({"doc_id": ["a"]}), "corpus")
    store.write_manifest(corpus, build_manifest(corpus, asset="corpus", upstream={}, rows=1))
    queries = store.put_table(pl.DataFrame({"q": ["?"]}), "synthetic_queries")
    store.write_manifest(
        queries,
        build_manifest(
            queries, asset="synthetic_queries", upstream={"corpus": corpus}, prompts={"question": {"id": "queries/x", "hash": "ab" * 32}}
        ),
    )
    scores = store.put_json({"ndcg": 0.5}, "benchmark_scores")
    store.write_manifest(scores, build_manifest(scores, asset="benchmark_scores", upstream={"corpus": corpus, "queries": queries}))
    tree = trace(store, scores.hash[:10])
    assert tree["hash_matches_disk"]
    assets = {tree["asset"]} | {u["asset"] for u in tree["upstream"]} | {u["asset"] for n in tree["upstream"] for u in n["upstream"]}
    assert assets == {"benchmark_scores", "corpus", "synthetic_queries"}
    assert "prompt question: queries/x" in trace_markdown(tree)


def test_verify_detects_a_flipped_byte(store):
    ref = store.put_table(pl.DataFrame({"x": list(range(100))}), "t")
    store.write_manifest(ref, build_manifest(ref, asset="t", upstream={}))
    assert all(r["ok"] for r in verify(store))
    path = Path(ref.payload_uri)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    bad = [r for r in verify(store) if not r["ok"]]
    assert [r["hash"] for r in bad] == [ref.hash]


def test_any_fsspec_url_works_as_root(tmp_path):
    """Remote roots (s3://, gs://) go through fsspec; the in-memory filesystem stands in for them."""
    store = ArtifactStore("memory://forge-test", cache_dir=tmp_path / "cache")
    assert not store.is_local
    ref = store.put_table(pl.DataFrame({"x": [1, 2, 3]}), "corpus")
    store.write_manifest(ref, build_manifest(ref, asset="corpus", upstream={}))
    assert store.read_table(ref)["x"].to_list() == [1, 2, 3]
    assert hash_file(store.local_path(ref)) == ref.hash
    assert [r["ok"] for r in verify(store)] == [True]
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"w")
    folder_ref = store.put_folder(model, "fine_tuned_encoder")
    assert (store.local_path(folder_ref) / "model.safetensors").read_bytes() == b"w"


def test_a_remote_folder_copied_half_way_is_not_the_artifact(tmp_path, monkeypatch):
    """Object stores have no folder rename: a folder is copied object by object and marked complete
    last, so a copy that dies half way is invisible to readers and the next writer redoes it."""
    store = ArtifactStore("memory://half-copied", cache_dir=tmp_path / "cache")
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(b"w" * 10)
    real_copy, copied = store.fs.copy, []

    def copy_then_die(src, dst, **kwargs):
        if copied:
            raise OSError("connection reset")
        copied.append(dst)
        return real_copy(src, dst, **kwargs)

    monkeypatch.setattr(store.fs, "copy", copy_then_die)
    with pytest.raises(OSError, match="connection reset"):
        store.put_folder(model, "fine_tuned_encoder")
    ref = store._ref("fine_tuned_encoder", hash_tree(model), "model", "folder")
    assert store.fs.exists(copied[0]) and not store.exists(ref)  # one object landed; not the artifact
    monkeypatch.setattr(store.fs, "copy", real_copy)
    assert store.put_folder(model, "fine_tuned_encoder") == ref and store.exists(ref)
    assert sorted(p.relative_to(store.local_path(ref)).as_posix() for p in store.local_path(ref).rglob("*") if p.is_file()) == [
        "config.json", "sub/weights.bin"]  # fmt: skip
    assert store.rehash(ref) == ref.hash and store.partial_writes() == []


def test_pointers_and_scoreboards_live_on_the_store_filesystem(tmp_path, monkeypatch):
    """The IO manager's pointers, the scoreboards, and `trace`/`verify` all follow the store's
    root: with a non-local root nothing lands on the local disk (the bug: pointers went to a local
    folder, so a step in another pod could not find its upstream)."""
    import dagster as dg

    from retriever_forge.orchestration.cli import main
    from retriever_forge.orchestration.resources import ArtifactRefIOManager, ArtifactStoreResource, artifact_ref_io_manager

    monkeypatch.chdir(tmp_path)
    root = "memory://pointer-test"
    store = ArtifactStore(root, cache_dir=tmp_path / "cache")

    @dg.asset(io_manager_key="artifact_io", partitions_def=dg.StaticPartitionsDefinition(["p1"]))
    def upstream_table(artifact_store: ArtifactStoreResource):
        s = artifact_store.get_store()
        ref = s.put_table(pl.DataFrame({"x": [1, 2]}), "upstream_table")
        s.write_manifest(ref, build_manifest(ref, asset="upstream_table", upstream={}, partition="p1"))
        return ref

    @dg.asset(io_manager_key="artifact_io", partitions_def=dg.StaticPartitionsDefinition(["p1"]))
    def downstream_table(artifact_store: ArtifactStoreResource, upstream_table):
        s = artifact_store.get_store()
        df = s.read_table(upstream_table).with_columns(y=pl.col("x") * 10)
        ref = s.put_table(df, "downstream_table")
        s.write_manifest(ref, build_manifest(ref, asset="downstream_table", upstream={"upstream_table": upstream_table}))
        return ref

    resources = {
        "artifact_store": ArtifactStoreResource(root=root, work_dir=str(tmp_path / "work")),
        "artifact_io": artifact_ref_io_manager,
    }
    assert dg.materialize([upstream_table, downstream_table], partition_key="p1", resources=resources).success
    down = store.read_pointer("downstream_table", "p1")
    assert store.read_table(down)["y"].to_list() == [10, 20]
    assert store.fs.exists("/pointer-test/refs/upstream_table/p1.json")
    with pytest.raises(KeyError, match="no materialization of 'corpus'"):
        store.read_pointer("corpus", "p1")
    store.write_text(store.scoreboard_path("p1", "json"), '{"dataset": "p1", "systems": []}')
    assert store.read_scoreboard("p1") == {"dataset": "p1", "systems": []} and store.read_scoreboard("p2") is None
    assert main(["trace", "downstream_table", "p1", "--home", root]) == 0
    assert main(["verify", "--home", root]) == 0
    assert not list(tmp_path.rglob("*.json"))  # no pointer, manifest or scoreboard on the local disk

    local = tmp_path / "local-store"  # the IO manager given its own root (tests do this) uses that store
    resources = {"artifact_store": ArtifactStoreResource(root=str(local), work_dir=str(tmp_path / "work")),
                 "artifact_io": ArtifactRefIOManager(root=str(local))}  # fmt: skip
    assert dg.materialize([upstream_table, downstream_table], partition_key="p1", resources=resources).success
    assert ArtifactStore(local).read_pointer("downstream_table", "p1").kind == "downstream_table"
    for bad in ("..", ".hidden", ""):
        with pytest.raises(ArtifactError):
            store.pointer_path(bad, "p1")
