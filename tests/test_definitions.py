"""The code location loads and its graph is the one the README describes."""

from datetime import datetime

import dagster as dg

from retriever_forge.definitions import defs

EXPECTED_CHAIN = [
    "corpus",
    "synthetic_queries",
    "relevance_judgments",
    "hard_negatives",
    "training_examples",
    "fine_tuned_encoder",
    "corpus_index",
    "benchmark_scores",
]


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert set(EXPECTED_CHAIN) | {"eval_queries", "eval_qrels"} == keys


def test_graph_chains_in_order():
    graph = defs.resolve_asset_graph()
    for upstream, downstream in zip(EXPECTED_CHAIN, EXPECTED_CHAIN[1:], strict=False):
        parents = {p.to_user_string() for p in graph.get(dg.AssetKey(downstream)).parent_keys}
        assert upstream in parents, f"{downstream} should depend on {upstream}"


def test_every_asset_is_partitioned_by_dataset():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        keys = graph.get(key).partitions_def.get_partition_keys()
        assert {"demo", "cacm"} <= set(keys)


def test_jobs_schedule_and_checks():
    assert defs.resolve_job_def("adapt_retriever")
    for group in ("data", "generation", "training", "evaluation"):
        assert defs.resolve_job_def(f"{group}_stage")
    schedule = defs.resolve_schedule_def("nightly_adaptation")
    assert schedule.cron_schedule == "0 2 * * *"
    checks = {k.name for k in defs.resolve_asset_graph().asset_check_keys}
    assert {"corpus_schema", "unparseable_share", "training_loss_finite", "fine_tuned_not_worse"} <= checks


def test_nightly_schedule_requests_one_run_per_dataset():
    schedule = defs.resolve_schedule_def("nightly_adaptation")
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 1, 2), repository_def=defs.get_repository_def())
    requests = list(schedule.evaluate_tick(context).run_requests)
    assert {"demo", "cacm"} <= {r.partition_key for r in requests}
    assert all(r.run_key.endswith("2026-01-02") for r in requests)
