"""Nightly automation in-process: dynamic dataset partitions, the datasets-file sensor, the
observation of each dataset's files and the automation conditions it drives, failure alerts.

The real daemon on PostgreSQL is tested in tests/test_daemon_postgres.py.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import pytest

from retriever_forge.orchestration.assets.common import DATASET_PARTITIONS
from retriever_forge.orchestration.cli import main
from retriever_forge.orchestration.definitions import defs
from tests.conftest import write_beir

GRAPH = {"corpus", "eval_queries", "eval_qrels", "synthetic_queries", "relevance_judgments", "hard_negatives",
         "training_examples", "fine_tuned_encoder", "corpus_index", "benchmark_scores"}  # fmt: skip


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A private datasets file (demo only), artifact store and Dagster home."""
    registry = tmp_path / "datasets.yaml"
    registry.write_text("# team datasets\ndatasets:\n  demo: {source: demo, max_documents: 20}\n")
    monkeypatch.setenv("RETRIEVER_FORGE_DATASETS", str(registry))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return tmp_path


def _store_config(home):
    return {"resources": {"artifact_store": {"config": {"root": str(home / "forge"), "work_dir": str(home / "forge" / "work")}}}}


def test_datasets_add_makes_a_new_partition_materializable_without_a_reload(env, capsys):
    """The code location (``defs``) was loaded before the dataset existed; it runs it anyway."""
    write_beir(env / "tiny")
    job = defs.resolve_job_def("data_stage")
    assert main(["datasets", "add", "tiny", "--beir", str(env / "tiny"), "--description", "six passages"]) == 0
    assert "partition registered" in capsys.readouterr().out
    instance = dg.DagsterInstance.get()
    assert "tiny" in job.partitions_def.get_partition_keys(dynamic_partitions_store=instance)
    result = job.execute_in_process(partition_key="tiny", instance=instance, run_config=_store_config(env))
    assert result.success
    rows = result.asset_materializations_for_node("corpus")[0].metadata["dagster/row_count"].value
    assert rows == 6
    assert main(["datasets", "list"]) == 0
    listing = capsys.readouterr().out
    assert "tiny" in listing and "registered" in listing and "UNREADABLE" not in listing
    assert main(["datasets", "add", "typo", "--beir", str(env / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err and "typo" not in (env / "datasets.yaml").read_text()
    assert main(["datasets", "remove", "tiny"]) == 0
    assert "tiny" not in instance.get_dynamic_partitions(DATASET_PARTITIONS)
    assert "tiny" not in (env / "datasets.yaml").read_text() and "# team datasets" in (env / "datasets.yaml").read_text()


def test_registry_sensor_picks_up_hand_edits_of_the_datasets_file(env):
    sensor = defs.resolve_sensor_def("dataset_registry")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING  # launches no runs: safe to be on
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(DATASET_PARTITIONS, ["demo", "old"])
        (env / "datasets.yaml").write_text("datasets:\n  demo: {source: demo}\n  notes: {source: demo}\n")
        result = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
        requests = {type(r).__name__: sorted(r.partition_keys) for r in result.dynamic_partitions_requests}
        assert requests == {"AddDynamicPartitionsRequest": ["notes"], "DeleteDynamicPartitionsRequest": ["old"]}
        instance.add_dynamic_partitions(DATASET_PARTITIONS, ["notes"])
        instance.delete_dynamic_partition(DATASET_PARTITIONS, "old")
        assert isinstance(sensor(dg.build_sensor_context(instance=instance, definitions=defs)), dg.SkipReason)
        (env / "datasets.yaml").write_text("datasets: [unclosed\n")
        skip = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
        assert isinstance(skip, dg.SkipReason) and "not valid YAML" in skip.skip_message


def _observe(instance, env):
    result = defs.resolve_job_def("observe_datasets").execute_in_process(instance=instance, run_config=_store_config(env))
    assert result.success
    return result


def _log_lines(instance, result, text: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(result.run_id) if text in (e.user_message or "")]


def _requested(result) -> dict[str, set]:
    out = {}
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        parts = result.get_requested_partitions(key)
        if parts:
            out[key.to_user_string()] = set(parts)
    return out


def test_automation_runs_a_dataset_once_its_files_are_observed_and_never_an_unreadable_one(env):
    write_beir(env / "tiny")
    (env / "datasets.yaml").write_text(
        f"datasets:\n  tiny: {{source: beir, path: {env / 'tiny'}}}\n  gone: {{source: beir, path: {env / 'missing'}}}\n"
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(DATASET_PARTITIONS, ["tiny", "gone"])
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.total_requested == 0  # nothing observed yet: every dataset's source is missing
        observed = _observe(instance, env)
        logs = _log_lines(instance, observed, "cannot be read")
        assert len(logs) == 1 and "'gone'" in logs[0] and "not found" in logs[0]
        second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert _requested(second) == {name: {"tiny"} for name in GRAPH}  # the whole graph, for tiny only
        again = _observe(instance, env)  # the same problem is not reported a second night
        assert not _log_lines(instance, again, "cannot be read")


class _Webhook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    server = HTTPServer(("127.0.0.1", 0), _Webhook)
    _Webhook.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Webhook.received
    server.shutdown()


def _failed_run_context(env, instance):
    """A real failed run: the corpus step of a dataset whose folder is gone."""
    (env / "datasets.yaml").write_text(f"datasets:\n  gone: {{source: beir, path: {env / 'missing'}}}\n")
    instance.add_dynamic_partitions(DATASET_PARTITIONS, ["gone"])
    result = defs.resolve_job_def("data_stage").execute_in_process(
        partition_key="gone", instance=instance, run_config=_store_config(env), raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    return result.run_id, dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert", dagster_instance=instance, dagster_run=result.dagster_run, dagster_event=failure
    ).for_run_failure()


def test_run_failure_alert_posts_dataset_step_error_and_url_to_the_webhook(env, webhook, monkeypatch):
    url, received = webhook
    monkeypatch.setenv("RETRIEVER_FORGE_ALERT_WEBHOOK", url)
    monkeypatch.setenv("RETRIEVER_FORGE_UI_URL", "http://dagster.example:3000")
    monkeypatch.setenv("RETRIEVER_FORGE_ALERT_FILE", str(env / "alerts.jsonl"))
    with dg.instance_for_test() as instance:
        run_id, context = _failed_run_context(env, instance)
        defs.resolve_sensor_def("run_failure_alert")(context)
    assert len(received) == 1
    content_type, alert = received[0]
    assert content_type == "application/json"
    assert alert["dataset"] == "gone" and alert["step"] == "corpus" and alert["job"] == "data_stage"
    assert "missing" in alert["error"] and "not found" in alert["error"] and "\n" not in alert["error"]
    assert alert["run_url"] == f"http://dagster.example:3000/runs/{run_id}"
    assert alert["text"].startswith("retriever-forge: gone failed at corpus:")
    assert not (env / "alerts.jsonl").exists()


def test_run_failure_alert_is_written_to_a_local_file_without_a_webhook_or_when_it_fails(env, monkeypatch):
    monkeypatch.delenv("RETRIEVER_FORGE_ALERT_WEBHOOK", raising=False)
    monkeypatch.setenv("RETRIEVER_FORGE_ALERT_FILE", str(env / "alerts.jsonl"))
    with dg.instance_for_test() as instance:
        run_id, context = _failed_run_context(env, instance)
        sensor = defs.resolve_sensor_def("run_failure_alert")
        sensor(context)
        monkeypatch.setenv("RETRIEVER_FORGE_ALERT_WEBHOOK", "http://127.0.0.1:9/closed-port")  # nothing listens
        sensor(context)
    lines = [json.loads(line) for line in (env / "alerts.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(a["run_id"] == run_id and a["step"] == "corpus" for a in lines)
