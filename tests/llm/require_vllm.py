"""pytest plugin for ``make test-vllm``: there, a skipped test fails the run.

The vLLM tests skip where vLLM is not importable (the project's own ``.venv``). Under
``make test-vllm`` (``.venv-vllm``) a skip would mean the engine was never exercised, so it
is reported as a failure instead of passing silently. Load with ``-p tests.llm.require_vllm``.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} skipped under `make test-vllm`, where every selected test must run: {reason}"
    return report
