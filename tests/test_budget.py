"""Budget presets: what each sets, the precedence of run config / dataset overrides / preset, the plan."""

import pytest

from retriever_forge.budget import BUDGETS, PRESETS, ThroughputLog, estimate_plan, plan_message, preset_values, with_budget
from retriever_forge.datasets import DatasetError, DatasetSpec, load_registry
from retriever_forge.orchestration.assets.common import resolve_config, run_config_values
from retriever_forge.orchestration.assets.generation import RelevanceJudgmentsConfig, SyntheticQueriesConfig
from retriever_forge.orchestration.assets.training import FineTuneConfig

CONFIGS = {"synthetic_queries": SyntheticQueriesConfig, "relevance_judgments": RelevanceJudgmentsConfig,
           "fine_tuned_encoder": FineTuneConfig}  # fmt: skip


def test_every_preset_sets_real_config_fields_and_grows_with_the_budget():
    for budget in BUDGETS:
        for asset, values in PRESETS[budget].items():
            assert set(values) <= set(CONFIGS[asset].model_fields), (budget, asset)
    sizes = [preset_values(b, "synthetic_queries")["documents_to_sample"] for b in BUDGETS]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert all(preset_values(b, "synthetic_queries")["queries_per_document"] == 3 for b in BUDGETS)  # every style used
    with pytest.raises(ValueError, match="unknown budget 'huge'"):
        preset_values("huge", "synthetic_queries")


def test_run_config_beats_dataset_overrides_beat_the_preset_beats_defaults():
    spec = DatasetSpec(name="x", extra={"overrides": {"synthetic_queries": {"queries_per_document": 2}}})
    config = resolve_config(SyntheticQueriesConfig(min_passage_words=5, budget="quick"), spec, "synthetic_queries")
    assert config.min_passage_words == 5  # run config
    assert config.queries_per_document == 2  # dataset override
    assert config.documents_to_sample == 400  # quick preset
    assert config.round_trip_k == SyntheticQueriesConfig().round_trip_k  # asset default
    assert config.budget == "quick"
    assert resolve_config(SyntheticQueriesConfig(), spec, "synthetic_queries").documents_to_sample == 2000  # standard


def test_budget_falls_back_to_the_dataset_then_standard():
    def budget(config, spec):
        return resolve_config(config, spec, "fine_tuned_encoder").budget

    assert budget(FineTuneConfig(), DatasetSpec(name="x")) == "standard"
    assert budget(FineTuneConfig(), DatasetSpec(name="x", budget="quick")) == "quick"
    assert budget(FineTuneConfig(budget="thorough"), DatasetSpec(name="x", budget="quick")) == "thorough"
    config = with_budget({"ops": {"synthetic_queries": {"config": {"budget": "quick"}}}}, "thorough")
    assert config["ops"]["synthetic_queries"]["config"]["budget"] == "quick"  # set explicitly: kept
    assert {a: c["config"]["budget"] for a, c in config["ops"].items() if a != "synthetic_queries"} == {
        "relevance_judgments": "thorough",
        "fine_tuned_encoder": "thorough",
    }
    with pytest.raises(DatasetError, match="budget must be"):
        DatasetSpec(name="x", budget="lavish")
    assert load_registry()["demo"].budget == "quick"  # what `make demo` runs


def test_plan_uses_every_passage_of_a_small_corpus_and_caps_a_large_one():
    small = estimate_plan(eligible_passages=300, budget="standard")
    assert small["passages"] == 300 and small["generations"] == 900 and small["calibration_pairs"] == 200
    large = estimate_plan(eligible_passages=5000, budget="standard")
    assert large["passages"] == 2000 and large["generations"] == 6000
    # 6,000 generations at 8/s are 12.5 minutes: a 5,000-passage corpus stays within standard's 45.
    assert 12.5 < large["estimated_minutes"] < 45 < large["estimated_minutes_if_judge_passes"] + 45
    assert "2000 passages -> 6000 generated queries" in plan_message(large)
    assert estimate_plan(10, "standard", documents_to_sample=None)["passages"] == 10


def test_a_run_config_value_equal_to_the_default_still_beats_the_preset():
    # Dagster leaves a value equal to the field's default out of model_fields_set; the run's own
    # run config is read too, so an explicit `queries_per_document: 1` is not overridden by 3.
    import dagster as dg

    seen = []

    @dg.asset(name="synthetic_queries")
    def probe(context, config: SyntheticQueriesConfig):
        seen.append(resolve_config(config, DatasetSpec(name="x"), "synthetic_queries", run_config_values(context)).queries_per_document)

    assert dg.materialize([probe], run_config={"ops": {"synthetic_queries": {"config": {"queries_per_document": 1}}}}).success
    assert dg.materialize([probe]).success
    assert seen == [1, 3]


def test_the_plan_uses_the_rates_this_machine_measured(tmp_path):
    log = ThroughputLog(tmp_path / "throughput.json")
    assumed = estimate_plan(eligible_passages=1000, budget="standard")
    assert "assumed: not yet measured" in plan_message(assumed)
    # A machine four times slower than the assumed rate: 2 generations/s measured over 600.
    log.record("generations_per_s", count=600, seconds=300.0, model="smollm2")
    log.record("judgments_per_s", count=10, seconds=100.0, model="smollm2")  # under one batch: not a measurement
    rates = log.rates({"generations_per_s": "smollm2", "judgments_per_s": "smollm2", "train_examples_per_s": "minilm"})
    assert rates == {"generations_per_s": 2.0}
    measured = estimate_plan(eligible_passages=1000, budget="standard", throughput=rates)
    # 3,000 generations at 2/s instead of 8/s: 18.75 minutes more.
    assert measured["estimated_minutes"] - assumed["estimated_minutes"] == pytest.approx(3000 / 2 / 60 - 3000 / 8 / 60, abs=0.1)
    assert "measured on this machine by earlier runs: generations_per_s" in plan_message(measured)
    # A rate measured with another generator is not this generator's.
    assert log.rates({"generations_per_s": "gemma"}) == {}


def test_a_broken_throughput_file_falls_back_to_the_assumed_rates(tmp_path):
    path = tmp_path / "throughput.json"
    path.write_text("{not json")
    assert ThroughputLog(path).rates({"generations_per_s": "smollm2"}) == {}
    with pytest.raises(ValueError, match="unknown rate"):
        ThroughputLog(path).record("tokens_per_s", 100, 1.0, "x")


def test_a_long_plan_says_how_to_shorten_it():
    quiet = estimate_plan(eligible_passages=3000, budget="standard")  # the assumed bf16 rates: under 45 min
    assert quiet["estimated_minutes"] < 45 and "over 45 min" not in plan_message(quiet)
    slow = estimate_plan(eligible_passages=3000, budget="standard", throughput={"generations_per_s": 1.4})
    assert slow["estimated_minutes"] > 45 and "over 45 min: fewer passages" in plan_message(slow)
    assert "over 45 min" not in plan_message(estimate_plan(eligible_passages=3000, budget="quick", throughput={"generations_per_s": 1.4}))
