"""The whole graph, materialized in-process on the offline demo with real models, kept tiny."""

import json

import dagster as dg
import polars as pl
import pytest

from retriever_forge.artifacts import ArtifactStore
from retriever_forge.orchestration.assets import ALL_ASSETS
from retriever_forge.orchestration.resources import ArtifactStoreResource, EncoderResource, LLMResource, artifact_ref_io_manager
from retriever_forge.prompts import PROMPTS_DIR
from retriever_forge.provenance import trace, verify

TINY_RUN = {
    "ops": {
        "synthetic_queries": {"config": {"documents_to_sample": 24, "round_trip_k": 50, "synthetic_test_fraction": 0.25}},
        "relevance_judgments": {"config": {"candidates_per_query": 2}},
        "hard_negatives": {"config": {"rank_start": 3, "rank_end": 30, "negatives_per_query": 2}},
        "fine_tuned_encoder": {"config": {"epochs": 1, "batch_size": 4}},
    }
}


def _resources(home):
    return {
        "artifact_store": ArtifactStoreResource(root=str(home), work_dir=str(home / "work")),
        "artifact_io": artifact_ref_io_manager,
        "llm": LLMResource(batch_size=8),
        "encoder": EncoderResource(batch_size=32),
    }


def _materialize(home, instance, run_config=TINY_RUN):
    return dg.materialize(ALL_ASSETS, partition_key="demo", resources=_resources(home), run_config=run_config, instance=instance)


def _ref(home, asset):
    return ArtifactStore(home).read_pointer(asset, "demo")


@pytest.fixture
def first_run(tiny_demo_run):
    return tiny_demo_run


@pytest.mark.slow
def test_full_graph_materializes_with_scores(first_run):
    home, _, result, _ = first_run
    assert result.success
    store = ArtifactStore(home)
    scores = store.read_table(_ref(home, "benchmark_scores"))
    assert set(scores["system"]) == {"bm25", "base", "hybrid-base", "fine-tuned", "hybrid"}
    board = store.read_scoreboard("demo")
    assert all(r["judgments"] == "synthetic" for r in board["systems"])
    # The judge checked itself (calibration pairs) and the scoreboard says whose weights were published.
    assert set(board["judge"]) == {"auc", "pairs", "used"} and board["judge"]["pairs"] > 0 and 0 <= board["judge"]["auc"] <= 1
    assert board["published_weights"] == "base" or board["published_weights"].startswith(("fine-tuned (step ", "fine-tuned (last step, "))
    judgments = store.read_table(_ref(home, "relevance_judgments"))
    assert {"calibration_source", "calibration_random"} <= set(judgments["pair_type"])
    if not board["judge"]["used"]:  # SmolLM2 is at chance: the rest was not judged
        assert set(judgments["pair_type"]) == {"calibration_source", "calibration_random"}
    rows = {r["system"]: r for r in board["systems"]}
    comparison = {"delta", "p_value", "p_value_holm", "ci95", "wins", "ties", "losses"}
    assert comparison <= set(rows["fine-tuned"]["vs_base"]) and comparison <= set(rows["fine-tuned"]["vs_bm25"])
    assert comparison <= set(rows["hybrid"]["vs_hybrid_base"]) and comparison <= set(rows["fine-tuned"]["vs_hybrid_base"])
    assert all(0.0 <= r["judged_at_10"] <= 1.0 for r in rows.values())
    assert rows["hybrid"]["fusion"]["method"] in {"rrf", "convex"} and rows["hybrid"]["fusion"]["chosen_on"] == "synthetic dev queries"
    fusion = json.loads((store.local_path(_ref(home, "corpus_index")) / "fusion.json").read_text())
    assert fusion["hybrid"]["method"] == rows["hybrid"]["fusion"]["method"] and {
        "method",
        "params",
        "dev_queries",
        "dev_ndcg_cut_10",
    } <= set(fusion["hybrid-base"])
    assert {"gained", "lost"} <= set(board["movers"])
    md = result.asset_materializations_for_node("benchmark_scores")[0].metadata["scoreboard"].value
    assert "SYNTHETIC" in md and "fine-tuned" in md
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["corpus_schema"] and checks["enough_queries"] and checks["examples_valid"]


@pytest.mark.slow
def test_trace_of_scores_reaches_the_corpus_with_matching_hashes(first_run):
    home, _, _, _ = first_run
    store = ArtifactStore(home)
    tree = trace(store, _ref(home, "benchmark_scores").hash)
    seen, stack = set(), [tree]
    while stack:
        node = stack.pop()
        if node.get("see_above"):
            continue
        assert node["hash_matches_disk"], node["asset"]
        seen.add(node["asset"])
        stack.extend(node["upstream"])
    assert {"corpus", "synthetic_queries", "relevance_judgments", "hard_negatives", "training_examples",
            "fine_tuned_encoder", "corpus_index", "benchmark_scores"} <= seen  # fmt: skip
    model_manifest = store.read_manifest(_ref(home, "fine_tuned_encoder"))
    assert model_manifest["upstream"]["training_examples"]["hash"] == _ref(home, "training_examples").hash
    assert all(r["ok"] for r in verify(store))


@pytest.mark.slow
def test_rematerializing_unchanged_writes_nothing_new_and_calls_no_llm(first_run):
    home, instance, _, _ = first_run
    before = sorted(p for p in (home / "artifacts").rglob("*") if p.is_file())
    result = _materialize(home, instance)
    assert result.success
    after = sorted(p for p in (home / "artifacts").rglob("*") if p.is_file())
    assert set(after) - set(before) == set()
    for node in ("synthetic_queries", "relevance_judgments"):
        stats = result.asset_materializations_for_node(node)[0].metadata["llm_stats"].value
        assert stats["misses"] == 0 and stats["hits"] > 0


@pytest.mark.slow
def test_fine_tuned_model_loads_with_sentence_transformers(first_run):
    from sentence_transformers import SentenceTransformer

    home, _, _, _ = first_run
    folder = ArtifactStore(home).local_path(_ref(home, "fine_tuned_encoder"))
    assert list(folder.glob("*.safetensors")) and not list(folder.rglob("*.bin"))
    model = SentenceTransformer(str(folder), device="cpu")
    assert model.encode(["hello"]).shape == (1, 384)


@pytest.mark.slow
def test_queries_table_keeps_row_level_lineage(first_run):
    home, _, _, _ = first_run
    q = ArtifactStore(home).read_table(_ref(home, "synthetic_queries"))
    assert q.filter(pl.col("dropped_by").is_null()).height > 0
    assert q["model_hash"].str.len_chars().min() == 64 and q["template_hash"].str.len_chars().min() == 64


@pytest.mark.slow
def test_editing_one_prompt_changes_exactly_the_downstream_hashes(first_run, tmp_path):
    home, instance, _, _ = first_run
    before = {a: _ref(home, a).hash for a in ("corpus", "eval_queries", "eval_qrels", "synthetic_queries",
                                             "relevance_judgments", "training_examples", "benchmark_scores")}  # fmt: skip
    template = PROMPTS_DIR / "queries" / "inpars_question_v1.txt"
    edited = tmp_path / "question_v2.txt"
    edited.write_text(template.read_text().replace("who built the first nuclear weapons", "what was the manhattan project"))
    config = json.loads(json.dumps(TINY_RUN))
    config["ops"]["synthetic_queries"]["config"]["templates"] = {"question": str(edited)}
    assert _materialize(home, instance, config).success
    after = {a: _ref(home, a).hash for a in before}
    assert [a for a in before if before[a] == after[a]] == ["corpus", "eval_queries", "eval_qrels"]
    manifest = ArtifactStore(home).read_manifest(_ref(home, "synthetic_queries"))
    assert manifest["prompts"]["question"]["id"] == str(edited)


@pytest.mark.slow
def test_trace_and_verify_commands(first_run, capsys):
    from retriever_forge.orchestration.cli import main

    home, _, _, _ = first_run
    assert main(["trace", "benchmark_scores", "demo", "--home", str(home)]) == 0
    text = capsys.readouterr().out
    assert "**benchmark_scores** [demo]" in text and "**corpus** [demo]" in text and "MISMATCH" not in text
    assert main(["trace", _ref(home, "corpus").hash[:12], "--json", "--home", str(home)]) == 0
    assert json.loads(capsys.readouterr().out)["asset"] == "corpus"
    assert main(["verify", "--home", str(home)]) == 0
    assert main(["trace", "no_such_asset", "demo", "--home", str(home)]) == 2


@pytest.mark.slow
def test_search_command_ranks_passages_of_the_built_index(first_run, capsys):
    from retriever_forge.orchestration.cli import main

    home, _, _, _ = first_run
    for system in ("fine-tuned", "hybrid", "bm25"):
        assert main(["search", "--dataset", "demo", "--home", str(home), "--system", system, "-k", "3", "--json", "sort a list"]) == 0
        hits = json.loads(capsys.readouterr().out)
        assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score"] >= hits[-1]["score"] and hits[0]["snippet"]
    assert main(["search", "--dataset", "demo", "--home", str(home), "sort a list"]) == 0
    assert "  1. " in capsys.readouterr().out


def test_search_names_the_missing_artifact_and_the_command(tmp_path, capsys):
    from retriever_forge.orchestration.cli import main

    assert main(["search", "--dataset", "x", "--home", str(tmp_path), "anything"]) == 2
    err = capsys.readouterr().err
    assert "no corpus_index for dataset 'x'" in err and "run `retriever-forge run --dataset x` first" in err
    assert main(["search", "--dataset", "x", "--home", str(tmp_path), "--system", "bm25", "anything"]) == 2
    assert "no corpus for dataset 'x'" in capsys.readouterr().err
