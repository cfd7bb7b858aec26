"""The real thing: a Dagster instance on a real PostgreSQL server, the real `dagster-daemon`
process ticking the observation schedule and the automation sensor (switched on by
``RETRIEVER_FORGE_AUTOMATION=on``), on a tiny dataset.

1. the first observation of the dataset launches one run of the whole graph;
2. a night with nothing changed (another observation, more automation ticks) launches none;
3. changing one corpus row launches a run from the corpus down;
and the runs' materializations and check results are in PostgreSQL.

Skipped (with the reason) only where PostgreSQL cannot start; .ci/run installs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from tests._postgres import throwaway_postgres, unavailable_reason
from tests.test_automation import GRAPH

# In CI (.ci/run installs PostgreSQL) a missing server is a failure, not a skip.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable_reason() is not None and not os.environ.get("CI"),
                                                   reason=str(unavailable_reason()))]  # fmt: skip

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TICK_S = 5
TINY_OVERRIDES = {
    "synthetic_queries": {"documents_to_sample": 12, "round_trip_k": 50, "synthetic_test_fraction": 0.25, "max_new_tokens": 24},
    "relevance_judgments": {"candidates_per_query": 2},
    "hard_negatives": {"rank_start": 3, "rank_end": 30, "negatives_per_query": 2},
    "fine_tuned_encoder": {"epochs": 1, "batch_size": 4},
}


def _write_corpus(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _wait(what: str, predicate, timeout_s: float, daemon: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if daemon.poll() is not None:
            pytest.fail(f"dagster-daemon exited ({daemon.returncode}) while waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(2)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}; daemon log tail:\n{log.read_text()[-3000:]}")


def _runs(instance, job_name=None, automation=False):
    filters = dg.RunsFilter(job_name=job_name) if job_name else None
    runs = instance.get_runs(filters=filters)
    if automation:
        runs = [r for r in runs if r.tags.get("retriever_forge/launched_by") == "automation"]
    return list(reversed(runs))  # oldest first


def _finished(instance, run_id):
    run = instance.get_run_by_id(run_id)
    return run if run.is_finished else None


def _materialized(instance, run_id) -> set[str]:
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    return {e.dagster_event.asset_key.to_user_string() for e in events if e.dagster_event.partition == "tiny"}


@pytest.fixture
def tiny_encoder(tmp_path_factory):
    from tests._tiny_encoder import tiny_encoder_folder

    return tiny_encoder_folder(tmp_path_factory.mktemp("encoder"))


def test_daemon_on_postgres_runs_only_what_changed(tmp_path, tiny_encoder, monkeypatch):
    import psycopg2

    from retriever_forge.demo_corpus import build_demo_corpus

    rows = [{"_id": r["doc_id"], "title": r["title"], "text": r["text"]} for r in build_demo_corpus(max_passages=40).iter_rows(named=True)]
    _write_corpus(tmp_path / "tiny", rows)
    (tmp_path / "datasets.yaml").write_text(json.dumps({"datasets": {"tiny": {"source": "beir", "path": str(tmp_path / "tiny"),
                                                                              "overrides": TINY_OVERRIDES}}}))  # fmt: skip
    home = tmp_path / "dagster_home"
    home.mkdir()
    (tmp_path / "workspace.yaml").write_text(
        "load_from:\n  - python_module:\n      module_name: tests._test_location\n"
        f"      working_directory: {REPO}\n      location_name: retriever_forge\n"
    )
    env = {
        **os.environ, "DAGSTER_HOME": str(home), "RETRIEVER_FORGE_DATASETS": str(tmp_path / "datasets.yaml"),
        "RETRIEVER_FORGE_HOME": str(tmp_path / "forge"), "FORGE_TEST_ENCODER": tiny_encoder,
        "RETRIEVER_FORGE_OBSERVE_CRON": "* * * * *", "RETRIEVER_FORGE_AUTOMATION": "on", "RETRIEVER_FORGE_AUTOMATION_INTERVAL_S": str(TICK_S),
        "RETRIEVER_FORGE_REGISTRY_INTERVAL_S": str(TICK_S), "RETRIEVER_FORGE_ALERT_FILE": str(tmp_path / "alerts.jsonl"),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DAGSTER_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(REPO),
    }  # fmt: skip
    for key in ("DAGSTER_HOME", "RETRIEVER_FORGE_DATASETS", "RETRIEVER_FORGE_HOME"):
        monkeypatch.setenv(key, env[key])
    with throwaway_postgres() as url:
        (home / "dagster.yaml").write_text(
            f"storage:\n  postgres:\n    postgres_url: {url.replace('postgresql://', 'postgresql+psycopg2://')}\n"
            "concurrency:\n  pools:\n    default_limit: 1\n"
            "run_monitoring:\n  enabled: true\n  poll_interval_seconds: 5\n"
            "code_servers:\n  local_startup_timeout: 1200\n"  # a busy machine imports torch slowly
            "telemetry:\n  enabled: false\n"
        )
        ws = ["-w", str(tmp_path / "workspace.yaml")]
        log = tmp_path / "daemon.log"
        with log.open("w") as out:
            daemon = subprocess.Popen(
                [str(VENV_BIN / "dagster-daemon"), "run", *ws], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
            )
        try:
            with dg.DagsterInstance.get() as instance:
                # 1. the dataset_registry sensor registers `tiny`; the first observation launches the whole graph
                _wait("the first observation", lambda: [r for r in _runs(instance, "observe_datasets") if r.is_success],
                      1200, daemon, log)  # fmt: skip
                first = _wait("the automation's first run", lambda: _runs(instance, automation=True), 600, daemon, log)[0]
                first = _wait("the first run to finish", lambda: _finished(instance, first.run_id), 1200, daemon, log)
                assert first.is_success, log.read_text()[-3000:]
                assert first.tags["dagster/partition"] == "tiny" and int(first.tags["dagster/max_runtime"]) > 0
                assert _materialized(instance, first.run_id) == GRAPH

                # 2. nothing changed: another observation and the ticks after it launch no run
                seen = len(_runs(instance, "observe_datasets"))
                _wait("a quiet night's observation",
                      lambda: [r for r in _runs(instance, "observe_datasets")[seen:] if r.is_success], 600, daemon, log)  # fmt: skip
                time.sleep(4 * TICK_S + 10)
                assert len(_runs(instance, automation=True)) == 1

                # 3. one corpus row changed: the next observation re-runs from the corpus down
                rows[3]["text"] += " Edited overnight."
                _write_corpus(tmp_path / "tiny", rows)
                second = _wait("the run after the edit", lambda: _runs(instance, automation=True)[1:], 600, daemon, log)[0]
                second = _wait("the second run to finish", lambda: _finished(instance, second.run_id), 1200, daemon, log)
                assert second.is_success, log.read_text()[-3000:]
                assert _materialized(instance, second.run_id) == GRAPH

            # 4. it is all in PostgreSQL
            with psycopg2.connect(url) as conn, conn.cursor() as cur:
                cur.execute("SELECT run_id, dagster_event_type, count(*) FROM event_logs WHERE dagster_event_type IN "
                            "('ASSET_MATERIALIZATION', 'ASSET_CHECK_EVALUATION', 'ASSET_OBSERVATION') GROUP BY 1, 2")  # fmt: skip
                counts = {(run_id, kind): n for run_id, kind, n in cur.fetchall()}
                cur.execute("SELECT count(*) FROM runs")
                total_runs = cur.fetchone()[0]
            for run in (first, second):
                assert counts[(run.run_id, "ASSET_MATERIALIZATION")] == len(GRAPH)
                assert counts[(run.run_id, "ASSET_CHECK_EVALUATION")] >= 5
            assert sum(n for (_, kind), n in counts.items() if kind == "ASSET_OBSERVATION") >= 3
            assert total_runs >= 5  # three observations (at least) and the two automation runs
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
