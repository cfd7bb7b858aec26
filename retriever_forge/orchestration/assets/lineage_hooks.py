"""OpenLineage emission hooked into materializations: START when an asset's work begins (from
:func:`retriever_forge.orchestration.assets.common.timed`), COMPLETE or FAIL when its step ends (op hooks on every
asset). Thin: the events are built by :mod:`retriever_forge.openlineage_events`; nothing happens
unless the environment configures an OpenLineage transport.
"""

from __future__ import annotations

import traceback

import dagster as dg

from retriever_forge import openlineage_events as ol
from retriever_forge.artifacts import ArtifactRef


def emit_start(context: dg.AssetExecutionContext) -> None:
    """START events for the assets this step materializes."""
    if not ol.emission_configured():
        return
    partition = context.partition_key if context.has_partition_key else None
    inputs = sorted({k.to_user_string() for k in context.assets_def.keys_by_input_name.values()})
    root = context.resources.artifact_store.root
    ol.emit(
        [
            ol.start_event(root, key.to_user_string(), partition, context.run.run_id, inputs=inputs)
            for key in sorted(context.selected_asset_keys)
        ]
    )


@dg.success_hook(required_resource_keys={"artifact_store"})
def openlineage_complete(context: dg.HookContext) -> None:
    """COMPLETE events for the artifacts the step materialized, with its asset check results."""
    if not ol.emission_configured():
        return
    from retriever_forge.orchestration.assets.run_records import asset_check_results

    store = context.resources.artifact_store.get_store()
    checks = asset_check_results(context.instance, {context.run_id})
    events = []
    for value in (context.op_output_values or {}).values():
        manifest = store.read_manifest(value) if isinstance(value, ArtifactRef) else None
        if manifest:
            events.append(ol.complete_event(store, value, manifest, [c for c in checks if c["asset"] == manifest["asset"]]))
    ol.emit(events)


@dg.failure_hook(required_resource_keys={"artifact_store"})
def openlineage_fail(context: dg.HookContext) -> None:
    """FAIL events for the assets of a failed step, with the error."""
    if not ol.emission_configured():
        return
    from retriever_forge.orchestration.assets import MATERIALIZED_ASSETS

    run = context.instance.get_run_by_id(context.run_id)
    partition = (run.tags if run else {}).get("dagster/partition")
    keys = next(
        (sorted(k.to_user_string() for k in a.keys) for a in MATERIALIZED_ASSETS if a.op.name == context.op.name), [context.op.name]
    )
    error = context.op_exception
    trace = "".join(traceback.format_exception(error)) if isinstance(error, BaseException) else None
    root = context.resources.artifact_store.root
    ol.emit([ol.fail_event(root, key, partition, context.run_id, error or "step failed", trace) for key in keys])
