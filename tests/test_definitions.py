"""The code location loads and its graph is the one the README describes."""

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import dagster as dg

from retriever_forge.orchestration.assets.common import dataset_partitions
from retriever_forge.orchestration.definitions import defs

REPO = Path(__file__).resolve().parents[1]
CODE_LOCATIONS = ["retriever_forge.orchestration.definitions", "retriever_forge.orchestration.definitions_k8s"]
EXPECTED_CHAIN = [
    "corpus",
    "synthetic_queries",
    "relevance_judgments",
    "hard_negatives",
    "training_examples",
    "fine_tuned_encoder",
    "corpus_index",
    "benchmark_scores",
]


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert set(EXPECTED_CHAIN) | {"eval_queries", "eval_qrels", "dataset_source"} == keys


def test_dagster_cli_validates_both_code_locations(tmp_path):
    # Dagster's own loader, as `dagster dev -m` and a workspace entry use it: it also refuses a module
    # holding more than one Definitions object at module level, which importing `defs` never shows.
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "DAGSTER_HOME": str(tmp_path), "DAGSTER_DISABLE_TELEMETRY": "1"}
    command = [str(Path(sys.executable).parent / "dagster"), "definitions", "validate"]
    command += [arg for module in CODE_LOCATIONS for arg in ("-m", module)]
    # ~15 s on a quiet machine; the long limit is for a CPU shared with other work (it has taken 8 minutes at nice 19).
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    for module in CODE_LOCATIONS:
        assert f"Validation successful for code location {module}." in log, log


def test_graph_chains_in_order():
    graph = defs.resolve_asset_graph()
    for upstream, downstream in zip(EXPECTED_CHAIN, EXPECTED_CHAIN[1:], strict=False):
        parents = {p.to_user_string() for p in graph.get(dg.AssetKey(downstream)).parent_keys}
        assert upstream in parents, f"{downstream} should depend on {upstream}"


def test_every_asset_is_partitioned_by_the_dynamic_dataset_partitions():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert graph.get(key).partitions_def == dataset_partitions, key


def test_jobs_schedules_sensors_and_checks():
    assert defs.resolve_job_def("adapt_retriever")
    for group in ("data", "generation", "training", "evaluation"):
        assert defs.resolve_job_def(f"{group}_stage")
    schedule = defs.resolve_schedule_def("nightly_adaptation")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert defs.resolve_schedule_def("observe_datasets").default_status == dg.DefaultScheduleStatus.STOPPED
    assert defs.resolve_sensor_def("retriever_forge_automation").default_status == dg.DefaultSensorStatus.STOPPED
    checks = {k.name for k in defs.resolve_asset_graph().asset_check_keys}
    assert {"corpus_schema", "unparseable_share", "training_loss_finite", "fine_tuned_not_worse"} <= checks


def test_llm_steps_retry_in_the_llm_pool_and_gpu_steps_run_in_the_gpu_pool():
    job = defs.resolve_job_def("adapt_retriever")
    pools = {node.name: node.definition.pool for node in job.graph.node_dict.values()}
    assert pools["synthetic_queries"] == pools["relevance_judgments"] == "llm"
    assert {pools[n] for n in ("hard_negatives", "fine_tuned_encoder", "corpus_index", "benchmark_scores")} == {"gpu"}
    policy = job.graph.node_named("relevance_judgments").definition.retry_policy
    assert policy.max_retries >= 1 and policy.backoff == dg.Backoff.EXPONENTIAL
    assert int(job.tags["dagster/max_runtime"]) > 0


def test_nightly_schedule_requests_one_run_per_readable_registered_dataset(tmp_path, monkeypatch):
    (tmp_path / "datasets.yaml").write_text(
        "datasets:\n  demo: {source: demo}\n  gone: {source: beir, path: nowhere}\n  unregistered: {source: demo}\n"
    )
    monkeypatch.setenv("RETRIEVER_FORGE_DATASETS", str(tmp_path / "datasets.yaml"))
    schedule = defs.resolve_schedule_def("nightly_adaptation")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("datasets", ["demo", "gone"])
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime(2026, 1, 2),
                                            repository_def=defs.get_repository_def())  # fmt: skip
        requests = list(schedule.evaluate_tick(context).run_requests)
    assert [r.partition_key for r in requests] == ["demo"]  # "gone" cannot be read; "unregistered" is no partition yet
    assert requests[0].run_key == "demo-2026-01-02"
