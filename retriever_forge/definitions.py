"""The Dagster code location: one ``Definitions`` object (loaded by ``workspace.yaml``)."""

from __future__ import annotations

import dagster as dg

from retriever_forge.assets import ALL_ASSETS
from retriever_forge.jobs import ALL_JOBS, ALL_SCHEDULES
from retriever_forge.resources import (
    DEFAULT_HOME,
    ArtifactRefIOManager,
    ArtifactStoreResource,
    EncoderResource,
    LLMResource,
)

defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=ALL_JOBS,
    schedules=ALL_SCHEDULES,
    resources={
        "artifact_store": ArtifactStoreResource(),
        "artifact_io": ArtifactRefIOManager(root=DEFAULT_HOME),
        "llm": LLMResource(),
        "encoder": EncoderResource(),
    },
)
