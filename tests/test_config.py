"""One path from run config and the datasets file to an asset's values (assets.common.effective_config)."""

import dagster as dg
import pytest
from pydantic import Field

from retriever_forge.datasets import DatasetError, load_registry
from retriever_forge.orchestration.assets.common import dataset_run_config, effective_config


class ProbeConfig(dg.Config):
    documents_to_sample: int = Field(default=200)
    round_trip_k: int = Field(default=20)


@dg.asset(partitions_def=dg.StaticPartitionsDefinition(["tiny"]))
def probe(context: dg.AssetExecutionContext, config: ProbeConfig) -> dict:
    return effective_config(context, config)


def _datasets(tmp_path, monkeypatch, overrides: str):
    path = tmp_path / "datasets.yaml"
    path.write_text(f"datasets:\n  tiny:\n    source: demo\n    overrides:\n      probe: {overrides}\n")
    monkeypatch.setenv("RETRIEVER_FORGE_DATASETS", str(path))
    return path


def _values(run_config=None) -> dict:
    result = dg.materialize([probe], partition_key="tiny", run_config=run_config or {}, instance=dg.DagsterInstance.ephemeral())
    return result.output_for_node("probe")


def test_dataset_override_applies_when_run_config_is_silent(tmp_path, monkeypatch):
    _datasets(tmp_path, monkeypatch, "{documents_to_sample: 160}")
    assert _values() == {"documents_to_sample": 160, "round_trip_k": 20}


def test_explicit_value_equal_to_the_default_wins_over_the_dataset_override(tmp_path, monkeypatch):
    _datasets(tmp_path, monkeypatch, "{documents_to_sample: 160}")
    # 200 is the code default: pydantic's model_fields_set would drop it; the run config keeps it
    values = _values({"ops": {"probe": {"config": {"documents_to_sample": 200}}}})
    assert values["documents_to_sample"] == 200


@pytest.mark.parametrize(("overrides", "message"), [
    ("{documents_to_sampel: 160}", "overrides.probe.documents_to_sampel: not a config field of probe"),
    ("{documents_to_sample: many}", "overrides.probe.documents_to_sample: Input should be a valid integer"),
])  # fmt: skip
def test_bad_override_names_the_file_the_dataset_and_the_field(tmp_path, monkeypatch, overrides, message):
    path = _datasets(tmp_path, monkeypatch, overrides)
    with pytest.raises(dg.Failure) as err:
        _values()
    assert str(path) in str(err.value) and "dataset 'tiny'" in str(err.value) and message in str(err.value)


def test_launchpad_config_holds_the_datasets_validated_overrides(tmp_path, monkeypatch):
    _datasets(tmp_path, monkeypatch, "{documents_to_sample: '160'}")
    spec = load_registry()["tiny"]
    assert dataset_run_config(spec, {"probe": ProbeConfig}) == {"ops": {"probe": {"config": {"documents_to_sample": 160}}}}
    with pytest.raises(DatasetError, match="overrides.probe: no such configurable asset"):
        dataset_run_config(spec, {"other": ProbeConfig})


def test_adapt_retriever_launchpad_shows_the_values_the_demo_run_uses():
    from retriever_forge.budget import preset_values
    from retriever_forge.orchestration.definitions import defs

    config = defs.resolve_job_def("adapt_retriever").partitioned_config.get_run_config_for_partition_key("demo")
    demo = load_registry()["demo"]
    expected = {**preset_values(demo.budget, "synthetic_queries"), **((demo.extra or {}).get("overrides") or {}).get("synthetic_queries", {})}
    shown = config["ops"]["synthetic_queries"]["config"]
    assert shown["budget"] == demo.budget and expected and {k: shown[k] for k in expected} == expected
