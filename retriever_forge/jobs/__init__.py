"""Jobs (the whole graph, and one per stage group) and the nightly schedule."""


import dagster as dg

from retriever_forge.assets.common import dataset_partitions
from retriever_forge.datasets import load_registry

STAGE_GROUPS = ("data", "generation", "training", "evaluation")

adapt_retriever_job = dg.define_asset_job(
    "adapt_retriever",
    selection=dg.AssetSelection.all(),
    partitions_def=dataset_partitions,
    description="The whole graph for one dataset: corpus to benchmark scores.",
)

stage_jobs = [
    dg.define_asset_job(f"{group}_stage", selection=dg.AssetSelection.groups(group), partitions_def=dataset_partitions,
                        description=f"Only the '{group}' assets (upstream artifacts must exist).")
    for group in STAGE_GROUPS
]  # fmt: skip


@dg.schedule(cron_schedule="0 2 * * *", job=adapt_retriever_job, execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.STOPPED)
def nightly_adaptation(context: dg.ScheduleEvaluationContext):
    """Every night, one run per dataset in the datasets file.

    Unchanged inputs cost little: artifacts are content-addressed and LLM generations cached,
    so a night with no new data re-uses every finished generation.
    """
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    for name in sorted(load_registry()):
        if name in dataset_partitions.get_partition_keys():
            yield dg.RunRequest(run_key=f"{name}-{day}", partition_key=name, tags={"retriever_forge/dataset": name})


ALL_JOBS = [adapt_retriever_job, *stage_jobs]
ALL_SCHEDULES = [nightly_adaptation]
