"""The Dagster code location: one ``Definitions`` object (loaded by ``workspace.yaml``)."""

from __future__ import annotations

import dagster as dg

from retriever_forge.orchestration.assets import ALL_ASSETS
from retriever_forge.orchestration.jobs import ALL_JOBS, ALL_SCHEDULES
from retriever_forge.orchestration.jobs.sensors import ALL_SENSORS
from retriever_forge.orchestration.resources import (
    ArtifactStoreResource,
    EncoderResource,
    LLMResource,
    artifact_ref_io_manager,
)


def build_definitions(**resources) -> dg.Definitions:
    """The code location, with any of its resources replaced (e.g. a test-sized encoder)."""
    return dg.Definitions(
        assets=ALL_ASSETS,
        jobs=ALL_JOBS,
        schedules=ALL_SCHEDULES,
        sensors=ALL_SENSORS,
        resources={
            "artifact_store": ArtifactStoreResource(),
            "artifact_io": artifact_ref_io_manager,
            "llm": LLMResource(),
            "encoder": EncoderResource(),
            **resources,
        },
    )


defs = build_definitions()
