"""One store, any filesystem: the whole graph on a real S3 API.

moto's standalone server (``moto[server]``) runs on 127.0.0.1, ``s3fs`` is the client, and every
step runs in its own process (Dagster's multiprocess executor): a step finds its upstream only
through the pointers and artifacts in the bucket. ``retriever-forge trace`` and ``verify`` then
work against the bucket, and nothing but local caches was written to the local disk.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from tests.conftest import free_port
from tests.test_automation import GRAPH
from tests.test_daemon_postgres import TINY_OVERRIDES

pytestmark = pytest.mark.slow
BUCKET = "forge-test"


@pytest.fixture
def s3_server(monkeypatch):
    """A moto S3 server on 127.0.0.1; AWS_ENDPOINT_URL points every boto client (s3fs too) at it."""
    pytest.importorskip("s3fs")
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("moto_server did not start")
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():  # fmt: skip
            monkeypatch.setenv(key, value)
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(BUCKET)
        yield fs
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_whole_graph_multiprocess_on_s3_then_trace_and_verify(tmp_path, s3_server, monkeypatch, capsys):
    from retriever_forge.artifacts import ArtifactStore
    from retriever_forge.demo_corpus import build_demo_corpus
    from retriever_forge.orchestration.assets.common import sync_dataset_partitions
    from retriever_forge.orchestration.cli import main
    from tests._tiny_encoder import tiny_encoder_folder

    root = f"s3://{BUCKET}/forge"
    folder = tmp_path / "tiny"
    folder.mkdir()
    rows = build_demo_corpus(max_passages=40).iter_rows(named=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": r["doc_id"], "title": r["title"], "text": r["text"]}) + "\n" for r in rows)
    )
    (tmp_path / "datasets.yaml").write_text(
        json.dumps({"datasets": {"tiny": {"source": "beir", "path": str(folder), "overrides": TINY_OVERRIDES}}})
    )
    work = tmp_path / "work"
    for key, value in {"RETRIEVER_FORGE_DATASETS": str(tmp_path / "datasets.yaml"), "RETRIEVER_FORGE_HOME": root,
                       "RETRIEVER_FORGE_WORK_DIR": str(work), "FORGE_TEST_ENCODER": tiny_encoder_folder(tmp_path / "encoder"),
                       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)  # the step processes inherit these
    from tests import _test_location

    with dg.instance_for_test() as instance:
        sync_dataset_partitions(instance)
        result = dg.execute_job(dg.reconstructable(_test_location.adapt_retriever_job), instance=instance,
                                tags={"dagster/partition": "tiny"})  # fmt: skip
        assert result.success
        engine = [e.message for e in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)]
        assert any("multiprocess executor" in (m or "") for m in engine)
        step_pids = {e.dagster_event.pid for e in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_START)}
        assert len(step_pids) == len({"corpus", "synthetic_queries", "relevance_judgments", "hard_negatives", "training_examples",
                                      "fine_tuned_encoder", "corpus_index", "benchmark_scores"})  # one process per step  # fmt: skip
        materialized = {e.dagster_event.asset_key.to_user_string()
                        for e in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)}  # fmt: skip
        assert materialized == GRAPH

    store = ArtifactStore(root)
    assert not store.is_local
    for asset in GRAPH:
        assert s3_server.exists(f"{BUCKET}/forge/refs/{asset}/tiny.json"), asset
    board = store.read_scoreboard("tiny")
    assert {r["system"] for r in board["systems"]} == {"bm25", "base", "fine-tuned", "hybrid", "hybrid-base"}
    assert s3_server.exists(f"{BUCKET}/forge/scoreboards/tiny.md")
    local = [p for p in tmp_path.rglob("*") if p.is_file() and (p.name in ("manifest.json", "tiny.json", "tiny.md") or "refs" in p.parts)]
    assert local == []  # no pointer, manifest or scoreboard on the local disk: only caches under work/

    assert main(["trace", "benchmark_scores", "tiny", "--home", root]) == 0
    text = capsys.readouterr().out
    assert "**benchmark_scores** [tiny]" in text and "**corpus** [tiny]" in text and "MISMATCH" not in text
    assert main(["verify", "--home", root]) == 0
    assert "0 corrupted or missing" in capsys.readouterr().out
    corpus = store.read_pointer("corpus", "tiny")
    s3_server.pipe_file(corpus.payload_uri, b"tampered")  # a flipped artifact in the bucket is caught
    assert main(["verify", "--home", root]) == 1
    assert "MISMATCH corpus" in capsys.readouterr().out
