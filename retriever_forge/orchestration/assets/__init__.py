"""The asset graph, per dataset partition (drawn once, at the top of ``README.md``).

Assets are thin: they read upstream artifacts, call the domain modules, write a new
content-addressed artifact with its provenance manifest, and attach metadata and checks.
"""

from retriever_forge.orchestration.assets.common import changed_upstream_condition
from retriever_forge.orchestration.assets.data import corpus, dataset_source
from retriever_forge.orchestration.assets.evaluation import benchmark_scores, corpus_index
from retriever_forge.orchestration.assets.generation import relevance_judgments, synthetic_queries
from retriever_forge.orchestration.assets.lineage_hooks import openlineage_complete, openlineage_fail
from retriever_forge.orchestration.assets.training import fine_tuned_encoder, hard_negatives, training_examples

_STAGES = [
    corpus,
    synthetic_queries,
    relevance_judgments,
    hard_negatives,
    training_examples,
    fine_tuned_encoder,
    corpus_index,
    benchmark_scores,
]


def _nightly(asset):
    """Every materialization reports COMPLETE/FAIL to OpenLineage when a transport is configured, and
    carries the one automation condition (it acts only while `retriever_forge_automation` is on)."""
    asset = asset.with_hooks({openlineage_complete, openlineage_fail})
    return asset.map_asset_specs(lambda spec: spec.replace_attributes(automation_condition=changed_upstream_condition()))


MATERIALIZED_ASSETS = [_nightly(a) for a in _STAGES]
ALL_ASSETS = [dataset_source, *MATERIALIZED_ASSETS]  # the observed source first, then what is materialized


def config_classes(assets=MATERIALIZED_ASSETS) -> dict:
    """Each configurable asset's name and its ``dg.Config`` class (from its ``config`` parameter)."""
    import inspect

    out = {}
    for a in assets:
        param = inspect.signature(a.op.compute_fn.decorated_fn).parameters.get("config")
        if param is not None:
            out[a.op.name] = param.annotation
    return out


__all__ = ["ALL_ASSETS", "MATERIALIZED_ASSETS", "config_classes"]
