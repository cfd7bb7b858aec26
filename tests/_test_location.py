"""The project's code location with a test-sized encoder, for the tests that run it in other
processes: the real daemon (test_daemon_postgres.py) and the multiprocess executor (test_s3_store.py).

Everything (assets, jobs, schedules, sensors, automation conditions) is `retriever_forge.orchestration.definitions`;
only the encoder is the tiny random one the test builds (its folder in ``FORGE_TEST_ENCODER``). The
store, datasets file and the rest come from the environment (``RETRIEVER_FORGE_HOME`` …).
"""

import os

from retriever_forge.orchestration.definitions import build_definitions
from retriever_forge.orchestration.resources import EncoderResource, LLMResource

defs = build_definitions(
    encoder=EncoderResource(model=os.environ.get("FORGE_TEST_ENCODER", "all-MiniLM-L6-v2"), batch_size=32), llm=LLMResource(batch_size=8)
)


def adapt_retriever_job():
    """The whole graph, for ``dagster.reconstructable`` (each step re-imports it in its own process)."""
    return defs.resolve_job_def("adapt_retriever")
