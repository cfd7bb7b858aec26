"""One path from run config and the datasets file to an asset's values (assets.common.effective_config),
and each stage's run config derived from its domain dataclass (assets.common.stage_config)."""

import dataclasses

import dagster as dg
import pytest
from pydantic import Field

from retriever_forge.datasets import DatasetError, load_registry
from retriever_forge.orchestration.assets.common import dataset_run_config, effective_config, field_docs, stage_config


class ProbeConfig(dg.Config):
    documents_to_sample: int = Field(default=200)
    round_trip_k: int = Field(default=20)


@dg.asset(partitions_def=dg.StaticPartitionsDefinition(["tiny"]))
def probe(context: dg.AssetExecutionContext, config: ProbeConfig) -> dict:
    return effective_config(context, config).model_dump()


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
    expected = {
        **preset_values(demo.budget, "synthetic_queries"),
        **((demo.extra or {}).get("overrides") or {}).get("synthetic_queries", {}),
    }
    shown = config["ops"]["synthetic_queries"]["config"]
    assert shown["budget"] == demo.budget and expected and {k: shown[k] for k in expected} == expected


def test_stage_configs_take_defaults_and_docs_from_their_domain_dataclass():
    from retriever_forge.orchestration.assets import config_classes

    derived = {name: cls for name, cls in config_classes().items() if hasattr(cls, "domain")}
    assert set(derived) == {"synthetic_queries", "relevance_judgments", "hard_negatives", "fine_tuned_encoder", "corpus_index"}
    for name, cls in derived.items():
        domain_fields, docs = {f.name: f for f in dataclasses.fields(cls.domain)}, field_docs(cls.domain)
        assert set(domain_fields) <= set(docs), f"{cls.domain.__name__}: fields without a doc in its Args"
        for field_name, info in cls.model_fields.items():
            assert info.description, f"{name}.{field_name} has no description"
            if field_name in domain_fields:
                assert info.description == docs[field_name]
        # the defaults of the run config are the dataclass's (tuples as lists)
        assert dataclasses.asdict(cls().to_domain()) == dataclasses.asdict(cls.domain())


def test_to_domain_carries_the_values_in_effect_and_the_derived_fields():
    from retriever_forge.orchestration.assets.generation import SyntheticQueriesConfig
    from retriever_forge.orchestration.assets.training import HardNegativesConfig

    qg = SyntheticQueriesConfig(styles=["claim"], round_trip_k=None).to_domain(test_fraction=0.25)
    assert (qg.styles, qg.round_trip_k, qg.test_fraction) == (("claim",), None, 0.25)
    mining = HardNegativesConfig(rank_start=3, guide_model="guide").to_domain(use_guide=True)
    assert (mining.rank_start, mining.use_guide) == (3, True)


def test_stage_config_refuses_a_field_its_dataclass_lacks():
    from retriever_forge.judging import JudgingConfig

    with pytest.raises(TypeError, match="JudgingConfig has no fields"):
        stage_config(JudgingConfig, ("template", "min_auc"))
