"""Every speed benchmark runs at a tiny size with a tiny local model and prints valid JSON lines
with its keys, so the benchmarks cannot rot unnoticed. (The figures themselves are quoted in
bench/README.md with the commands that produce them.)"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from _tiny_encoder import tiny_encoder_folder

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    common = _load("_common")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_encoder_folder(tmp_path_factory.mktemp("tiny"), extra_words=common._stdlib_vocabulary())
    torch.set_num_threads(before)


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"')]


def _check(capsys, rows: list[dict], keys: set[str], n: int) -> list[dict]:
    printed = _json_lines(capsys.readouterr().out)
    assert len(printed) == len(rows) == n
    for row in printed:
        assert keys <= row.keys(), keys - row.keys()
    return printed


def test_encoding_bench(tiny_model, capsys):
    rows = _load("encoding").main(["--datasets", "synthetic-40", "--model", tiny_model, "--rounds", "2", "--batch-size", "8"])
    (row,) = _check(capsys, rows, {"forge_passages_per_s", "st_passages_per_s", "speedup_median", "rounds", "max_abs_diff"}, 1)
    assert row["passages"] == 40 and row["rounds"] == 2 and row["max_abs_diff"] < 1e-4


def test_mining_bench(tiny_model, capsys):
    args = ["--datasets", "synthetic-300", "--model", tiny_model, "--rounds", "2", "--cold-rounds", "1", "--cold-max-docs", "120"]
    rows = _load("mining").main(args)
    warm, cold = _check(capsys, rows, {"setting", "forge_median_s", "st_median_s", "speedup_median", "peak_rss_mb"}, 2)
    assert (warm["setting"], warm["passages"], cold["setting"], cold["passages"]) == ("warm", 300, "cold", 120)
    assert warm["forge_negatives"] > 0 and warm["st_rows"] > 0


def test_training_bench(tiny_model, capsys):
    args = [
        "--datasets",
        "synthetic-120",
        "--model",
        tiny_model,
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--rounds",
        "1",
        "--max-seq-length",
        "32",
    ]
    rows = _load("training").main(args)
    (row,) = _check(capsys, rows, {"forge_examples_per_s", "st_examples_per_s", "speedup_median", "forge_steps", "st_steps"}, 1)
    assert row["forge_steps"] == row["st_steps"] == 2
    # Both sides in one precision; the project's side reports what it actually ran in.
    assert row["forge_precision"] == ("bfloat16-autocast" if row["precision"] == "bf16" else "float32")


def test_index_bench(tiny_model, tmp_path, capsys):
    args = ["--datasets", "synthetic-600", "--model", tiny_model, "--queries", "40", "--rounds", "1", "--cache", str(tmp_path)]
    rows = _load("index").main(args)
    printed = _check(capsys, rows, {"index_type", "build_s", "queries_per_s", "recall_at_k_vs_exact", "qps_vs_flat"}, 5)
    by_type = {r["index_type"]: r for r in printed}
    assert set(by_type) == {"flat", "ivf", "hnsw", "ivfpq", "ivfpq-sharded"} and by_type["flat"]["recall_at_k_vs_exact"] == 1.0


@pytest.mark.slow
def test_scaling_bench(tiny_model, tmp_path, capsys):
    args = ["--sizes", "100,150", "--encode-max", "100", "--model", tiny_model, "--cache", str(tmp_path), "--threads", "1"]
    rows = _load("scaling").main(args)
    printed = _check(capsys, rows, {"stage", "passages", "seconds", "peak_rss_mb"}, 5)
    assert [(r["stage"], r["passages"]) for r in printed] == [("encode", 100), ("mine", 100), ("index", 100), ("mine", 150), ("index", 150)]
    assert printed[3]["embeddings"] == "derived" and printed[3]["candidate_rows"] > 0


@pytest.mark.slow
def test_end_to_end_bench(capsys):
    rows = _load("end_to_end").main(["--datasets", "demo", "--job", "data_stage"])
    (row,) = _check(capsys, rows, {"dataset", "setting", "seconds", "cpu_seconds", "peak_rss_mb"}, 1)
    assert row["dataset"] == "demo" and row["seconds"] > 0


def _tiny_beir(folder: Path) -> Path:
    """A BEIR folder that is none of ../shared's: 30 stdlib docstring passages, 6 judged queries."""
    import textwrap

    common = _load("_common")
    doc_ids, texts = common.workload("synthetic-30")
    folder.mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for d, t in zip(doc_ids, texts, strict=True):
            f.write(json.dumps({"_id": d, "title": "", "text": t}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for i, t in enumerate(texts[:6]):
            f.write(json.dumps({"_id": f"q{i}", "text": " ".join(t.split()[:6])}) + "\n")
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\t{doc_ids[i]}\t1\n" for i in range(6)))
    (folder / "tiny.yaml").write_text(
        textwrap.dedent(
            """
            ops:
              synthetic_queries: {config: {documents_to_sample: 8, round_trip_k: null, queries_per_document: 1}}
              relevance_judgments: {config: {candidates_per_query: 1}}
              hard_negatives: {config: {rank_start: 2, rank_end: 10, negatives_per_query: 1}}
              fine_tuned_encoder: {config: {epochs: 1, batch_size: 4}}
            """
        )
    )
    return folder


SYSTEMS = (
    "bm25",
    "base",
    "hybrid-base",
    "fine-tuned",
    "hybrid",
    "rrf-base",
    "rrf-fine-tuned",
)  # bench/quality.py's rows, in order (hybrid*: the scoreboard's dev-chosen fusion)


@pytest.mark.slow
def test_quality_and_ablation_benches_on_any_beir_folder(tmp_path, capsys):
    folder = _tiny_beir(tmp_path / "tiny-beir")
    rows = _load("ablation").main(
        [str(folder), "--config", str(folder / "tiny.yaml"), "--home", str(tmp_path / "home"), "--variants", "none,infonce+graded"]
    )
    out = capsys.readouterr().out
    assert [(r["label"], r["system"]) for r in rows] == [(v, s) for v in ("none", "infonce+graded") for s in SYSTEMS]
    for r in rows:
        assert {"ndcg_cut_10", "recall_100", "map", "recip_rank", "queries", "seconds"} <= r.keys() and r["queries"] == 6
        assert 0.0 <= r["ndcg_cut_10"] <= 1.0
    assert "| none |" in out and "| infonce+graded |" in out  # the table, one row per variant
    n = len(SYSTEMS)
    assert rows[1]["ndcg_cut_10"] == rows[n + 1]["ndcg_cut_10"], "the base encoder does not depend on the variant"
    tuned = rows[SYSTEMS.index("fine-tuned")]
    assert tuned["train_queries"] > 0 and set(tuned["dropped"]) == {"margin", "judge", "guide"} and tuned["steps"] >= 1
    assert 0 <= tuned["best_step"] <= tuned["steps"]


def test_quality_suite_table_has_one_row_per_collection_with_every_column():
    suite = _load("quality_suite")
    rows = [
        {"system": "bm25", "ndcg_cut_10": 0.5, "queries": 4},
        {"system": "base", "ndcg_cut_10": 0.4, "queries": 4},
        {"system": "fine-tuned", "ndcg_cut_10": 0.45, "queries": 4, "seconds": 120.0, "train_queries": 90, "best_step": 3,
         "steps": 3, "judge": {"auc": 0.5, "pairs": 20, "used": False}},
        {"system": "rrf-base", "ndcg_cut_10": 0.52, "queries": 4},
        {"system": "rrf-fine-tuned", "ndcg_cut_10": 0.55, "queries": 4},
    ]  # fmt: skip
    table = suite.suite_table({"tiny": rows, "broken": []}).splitlines()
    assert "RRF(BM25, fine-tuned)" in table[0] and "judge AUC" in table[0]
    assert table[2] == "| tiny | 4 | 0.5000 | 0.4000 | 0.4500 | +0.0500 | 0.5200 | 0.5500 | 2.0 | 90 | 3 / 3 | 0.500 (off) |"
    assert table[3].startswith("| broken | failed |")


@pytest.mark.slow
def test_quality_suite_runs_quality_on_each_folder(tmp_path, capsys):
    folder = _tiny_beir(tmp_path / "tiny-beir")
    results = _load("quality_suite").main(
        [str(folder), "--config", str(folder / "tiny.yaml"), "--budget", "quick", "--home-root", str(tmp_path / "homes")]
    )
    out = capsys.readouterr().out
    systems = [r["system"] for r in results["tiny-beir"]]
    assert systems == list(SYSTEMS)
    tuned = next(r for r in results["tiny-beir"] if r["system"] == "fine-tuned")
    assert set(tuned["judge"]) == {"auc", "pairs", "used"} and tuned["judge"]["pairs"] > 0
    assert tuned["published_weights"] == "base" or tuned["published_weights"].startswith("fine-tuned")
    assert "| tiny-beir | 6 |" in out
