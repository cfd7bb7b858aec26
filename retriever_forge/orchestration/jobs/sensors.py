"""Sensors: the declarative automation, the datasets-file watcher, and failure alerts.

- ``retriever_forge_automation`` evaluates every asset's automation condition
  (:func:`retriever_forge.orchestration.assets.common.changed_upstream_condition`) and launches the runs it asks
  for; off until switched on.
- ``dataset_registry`` keeps the instance's dataset partitions equal to the datasets file, so a
  dataset added (or removed) by editing ``datasets.yaml`` by hand appears (or disappears) without a
  code-location reload; it launches no runs, so it is on by default.
- ``run_failure_alert`` sends one short JSON message per failed run (:mod:`retriever_forge.alerts`).
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from retriever_forge.alerts import FILE_ENV, UI_URL_ENV, WEBHOOK_ENV, deliver, failure_message
from retriever_forge.datasets import DatasetError, datasets_file, load_registry
from retriever_forge.orchestration.assets.common import dataset_partitions, registry_changes
from retriever_forge.orchestration.jobs import AUTOMATION_ON, RUN_TAGS

AUTOMATION_INTERVAL_S = int(os.environ.get("RETRIEVER_FORGE_AUTOMATION_INTERVAL_S", "30"))
REGISTRY_INTERVAL_S = int(os.environ.get("RETRIEVER_FORGE_REGISTRY_INTERVAL_S", "30"))

automation_sensor = dg.AutomationConditionSensorDefinition(
    "retriever_forge_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING if AUTOMATION_ON else dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=AUTOMATION_INTERVAL_S,
    run_tags={**RUN_TAGS, "retriever_forge/launched_by": "automation"},
    description="Runs only what changed: a dataset whose files' content hash, datasets-file entry or code changed "
    "is re-run from its first stale asset down. Needs the observe_datasets schedule on.",
)


@dg.sensor(minimum_interval_seconds=REGISTRY_INTERVAL_S, default_status=dg.DefaultSensorStatus.RUNNING)
def dataset_registry(context: dg.SensorEvaluationContext):
    """Register the datasets added to the datasets file by hand as partitions (and delete removed ones)."""
    path = datasets_file()
    try:
        registry = load_registry(path)
    except DatasetError as e:  # a half-edited file: say why, keep the partitions as they are
        return dg.SkipReason(f"datasets file not loaded: {str(e).splitlines()[0]}")
    added, removed = registry_changes(context.instance, registry)
    if not added and not removed:
        return dg.SkipReason(f"partitions match {Path(path).name} ({len(registry)} datasets)")
    requests = []
    if added:
        requests.append(dataset_partitions.build_add_request(added))
    if removed:
        requests.append(dataset_partitions.build_delete_request(removed))
    context.log.info(f"{path}: added {added or 'none'}, removed {removed or 'none'}")
    return dg.SensorResult(dynamic_partitions_requests=requests)


def alert_file() -> Path:
    from retriever_forge.orchestration.resources import DEFAULT_HOME

    return Path(os.environ.get(FILE_ENV) or Path(DEFAULT_HOME) / "alerts.jsonl")


@dg.run_failure_sensor(default_status=dg.DefaultSensorStatus.RUNNING, monitor_all_code_locations=False)
def run_failure_alert(context: dg.RunFailureSensorContext):
    """POST {dataset, step, error, run_url} to $RETRIEVER_FORGE_ALERT_WEBHOOK (else append it to the alert file)."""
    run = context.dagster_run
    step_failures = context.get_step_failure_events()
    if step_failures:
        first = step_failures[0]
        step = first.step_key
        err = first.event_specific_data.error
        error = err.message if err else (first.message or "")  # "ValueError: ..." (format_exception_only)
    else:
        step, error = None, context.failure_event.message or "run failed"
    message = failure_message(
        run.run_id,
        dataset=run.tags.get("dagster/partition"),
        step=step,
        error=error,
        base_url=os.environ.get(UI_URL_ENV, "http://127.0.0.1:3000"),
        job=run.job_name,
    )
    where = deliver(message, os.environ.get(WEBHOOK_ENV), alert_file())
    context.log.info(f"alert for run {run.run_id} sent to the {where}")


ALL_SENSORS = [automation_sensor, dataset_registry, run_failure_alert]
