"""What the Dagster side knows that the artifact store does not: the assets' config defaults and
the asset check results a Dagster instance recorded for given runs (for audits and lineage events).
"""

from __future__ import annotations

import dagster as dg


def config_defaults() -> dict[str, dict]:
    """Per asset key, the default values of its run config (what an audit marks changes against)."""
    from retriever_forge.orchestration.assets import MATERIALIZED_ASSETS

    out = {}
    for a in MATERIALIZED_ASSETS:
        field = a.op.config_field
        defaults = dict(field.default_value) if field is not None and field.default_provided else {}
        for key in a.keys:
            out[key.to_user_string()] = defaults
    return out


def _metadata_value(v):
    value = getattr(v, "value", v)
    return value if isinstance(value, str | int | float | bool | dict | list) or value is None else str(value)


def asset_check_results(instance: dg.DagsterInstance, run_ids: set[str]) -> list[dict]:
    """Every asset check evaluation the instance logged for these runs (plain dicts).

    Runs the instance has no record of contribute nothing (e.g. runs made on another instance).
    """
    results = []
    for run_id in sorted(r for r in run_ids if r):
        if instance.get_run_by_id(run_id) is None:
            continue
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            ev = record.dagster_event.event_specific_data
            results.append({
                "asset": ev.asset_key.to_user_string(), "check_name": ev.check_name, "passed": bool(ev.passed),
                "severity": ev.severity.value if ev.severity else "ERROR", "run_id": run_id,
                "metadata": {k: _metadata_value(v) for k, v in (ev.metadata or {}).items()},
            })  # fmt: skip
    return results


def instance_from_env() -> tuple[dg.DagsterInstance | None, str]:
    """The Dagster instance named by ``DAGSTER_HOME`` (or the project's ``.dagster_home``), and a
    sentence saying which one it is, or why there is none."""
    import os
    from pathlib import Path

    from retriever_forge.datasets import PROJECT_ROOT

    home = os.environ.get("DAGSTER_HOME") or (str(PROJECT_ROOT / ".dagster_home") if (PROJECT_ROOT / ".dagster_home").is_dir() else None)
    if not home or not Path(home).is_dir():
        return None, "no Dagster instance is reachable (DAGSTER_HOME is not set and the project has no .dagster_home)"
    os.environ["DAGSTER_HOME"] = home
    try:
        return dg.DagsterInstance.get(), f"asset check results from the Dagster instance at {home}"
    except Exception as e:  # noqa: BLE001 - the report says why instead of failing the audit
        return None, f"the Dagster instance at {home} could not be opened ({type(e).__name__}: {e})"
