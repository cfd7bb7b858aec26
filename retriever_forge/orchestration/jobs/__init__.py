"""Jobs (the whole graph, one per stage group, the dataset observation) and the schedules.

Two ways to run nightly, both off until switched on (UI: Automation, or ``dagster schedule
start`` / ``dagster sensor start``):

- **Run only what changed** (the default choice): the ``observe_datasets`` schedule observes every
  dataset's files on a cron (``RETRIEVER_FORGE_OBSERVE_CRON``, nightly at 02:00 UTC by default) and
  the ``retriever_forge_automation`` sensor (:mod:`retriever_forge.orchestration.jobs.sensors`) launches runs for
  the datasets, and only the assets, whose inputs or code changed.
- **Full refresh**: the ``nightly_adaptation`` schedule starts the whole graph for every readable
  dataset every night, changed or not.
"""

import os

import dagster as dg

from retriever_forge.datasets import DatasetError, load_registry
from retriever_forge.fingerprint import check_readable
from retriever_forge.orchestration.assets import MATERIALIZED_ASSETS, config_classes
from retriever_forge.orchestration.assets.common import DATASET_PARTITIONS, dataset_partitions, dataset_run_config
from retriever_forge.orchestration.assets.data import dataset_source

STAGE_GROUPS = ("data", "generation", "training", "evaluation")
OBSERVE_CRON = os.environ.get("RETRIEVER_FORGE_OBSERVE_CRON", "0 2 * * *")
# Longest a run may take before run monitoring fails it (needs `run_monitoring: enabled: true`
# in dagster.yaml); a hung LLM server or GPU then frees its pool slots instead of blocking the night.
MAX_RUNTIME_S = int(os.environ.get("RETRIEVER_FORGE_MAX_RUNTIME_S", str(6 * 3600)))
RUN_TAGS = {"dagster/max_runtime": str(MAX_RUNTIME_S)}
# `RETRIEVER_FORGE_AUTOMATION=on` in the code location's environment starts the observation schedule
# and the automation sensor switched on (a deployment's choice, instead of switching them in the UI).
AUTOMATION_ON = os.environ.get("RETRIEVER_FORGE_AUTOMATION", "off").lower() in ("on", "1", "true")


def dataset_config(group: str | None = None) -> dg.PartitionedConfig:
    """The Launchpad's run config for a dataset: its validated overrides from the datasets file.

    So the Launchpad shows the values the run will use (e.g. the demo's ``documents_to_sample:
    160``, not the code default); a value typed there wins, even one equal to the code default.
    """
    classes = config_classes()
    in_job = config_classes([a for a in MATERIALIZED_ASSETS if group is None or group in a.group_names_by_key.values()])

    def run_config_for(partition_key: str) -> dict:
        registry = load_registry()  # re-read: the file may have changed since the code location loaded
        if partition_key not in registry:
            return {}
        ops = dataset_run_config(registry[partition_key], classes).get("ops", {})
        ops = {a: c for a, c in ops.items() if a in in_job}
        return {"ops": ops} if ops else {}

    return dg.PartitionedConfig(partitions_def=dataset_partitions, run_config_for_partition_key_fn=run_config_for)


adapt_retriever_job = dg.define_asset_job(
    "adapt_retriever",
    selection=dg.AssetSelection.all(),
    config=dataset_config(),  # partitioned by dataset, like the assets (the config carries the partitions)
    tags=RUN_TAGS,
    description="The whole graph for one dataset: corpus to benchmark scores.",
)

stage_jobs = [
    dg.define_asset_job(f"{group}_stage", selection=dg.AssetSelection.groups(group),
                        config=dataset_config(group), tags=RUN_TAGS,
                        description=f"Only the '{group}' assets (upstream artifacts must exist).")
    for group in STAGE_GROUPS
]  # fmt: skip

observe_datasets_job = dg.define_asset_job(
    "observe_datasets",
    selection=dg.AssetSelection.assets(dataset_source.key),
    description="Record each dataset's data version (its files' content hash); cheap when nothing changed.",
)

observe_datasets = dg.ScheduleDefinition(
    name="observe_datasets",
    job=observe_datasets_job,
    cron_schedule=OBSERVE_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING if AUTOMATION_ON else dg.DefaultScheduleStatus.STOPPED,
    description="Observe every dataset's files (RETRIEVER_FORGE_OBSERVE_CRON); with the retriever_forge_automation "
    "sensor on, a changed dataset is re-run from its first stale asset down.",
)


@dg.schedule(cron_schedule="0 2 * * *", job=adapt_retriever_job, execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.STOPPED)
def nightly_adaptation(context: dg.ScheduleEvaluationContext):
    """Full refresh: every night, one run per registered dataset that can be read.

    Unchanged inputs cost little: artifacts are content-addressed and LLM generations cached,
    so a night with no new data re-uses every finished generation. A dataset that cannot be
    read (missing folder, an ``ir_datasets`` id not cached offline) is skipped with one line.
    """
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    registry = load_registry()
    for name in sorted(context.instance.get_dynamic_partitions(DATASET_PARTITIONS)):
        if name not in registry:
            continue
        try:
            check_readable(registry[name])
        except DatasetError as e:
            context.log.warning(f"skipping dataset {name!r}: {str(e).splitlines()[0]}")
            continue
        yield dg.RunRequest(run_key=f"{name}-{day}", partition_key=name, tags={"retriever_forge/dataset": name})


ALL_JOBS = [adapt_retriever_job, *stage_jobs, observe_datasets_job]
ALL_SCHEDULES = [nightly_adaptation, observe_datasets]
