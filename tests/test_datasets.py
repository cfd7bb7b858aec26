import json

import polars as pl
import pytest

from retriever_forge.datasets import DatasetError, DatasetSpec, load_dataset, load_registry, passage_text
from retriever_forge.evaluation import qrels_dict, score_run
from retriever_forge.lexical import bm25_run
from tests.conftest import SHARED, TINY_QUERIES, write_beir


def test_beir_folder_loads_corpus_queries_and_qrels(tiny_beir):
    ds = load_dataset(DatasetSpec(name="tiny", source="beir", path=str(tiny_beir)))
    assert ds.corpus.height == 6
    assert ds.has_judgments
    assert ds.qrels.sort("query_id").rows() == [("q1", "d3", 2), ("q2", "d6", 1)]


def test_malformed_json_line_names_file_and_line(tmp_path):
    root = write_beir(tmp_path / "bad")
    with open(root / "corpus.jsonl", "a") as f:
        f.write('{"_id": "d7", "text": \n')
    with pytest.raises(DatasetError, match=r"corpus.jsonl:7: malformed JSON"):
        load_dataset(DatasetSpec(name="bad", path=str(root)))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"title": "x", "text": "no id"}, "missing document id"),
        ({"_id": "d1", "text": "again"}, "duplicate document id 'd1'"),
        ({"_id": "d9", "text": 5}, "must be a string"),
    ],
)
def test_bad_corpus_rows_are_clear_errors(tmp_path, line, message):
    root = write_beir(tmp_path / "bad")
    with open(root / "corpus.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    with pytest.raises(DatasetError, match=message):
        load_dataset(DatasetSpec(name="bad", path=str(root)))


def test_non_utf8_bytes_are_reported(tmp_path):
    root = write_beir(tmp_path / "bad")
    with open(root / "corpus.jsonl", "ab") as f:
        f.write(b'{"_id": "d7", "text": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=r":7: not valid UTF-8"):
        load_dataset(DatasetSpec(name="bad", path=str(root)))


def test_empty_passages_are_quarantined_not_loaded(tmp_path):
    root = write_beir(tmp_path / "q")
    with open(root / "corpus.jsonl", "a") as f:
        f.write(json.dumps({"_id": "blank", "title": "", "text": "   "}) + "\n")
    ds = load_dataset(DatasetSpec(name="q", path=str(root)))
    assert "blank" not in ds.corpus["doc_id"].to_list()
    assert ds.quarantine.select("line", "doc_id", "reason").rows() == [(7, "blank", "empty passage")]


def test_qrels_naming_an_empty_or_missing_passage_load_and_score(tmp_path):
    # Real collections have such judgments (a passage whose text is empty, so it was set aside):
    # under the default policy they are counted and listed, and the collection still scores.
    qrels = "query-id\tcorpus-id\tscore\nq1\td3\t2\nq1\tblank\t1\nq2\td6\t1\nq2\tnope\t1\n"
    root = write_beir(tmp_path / "q", qrels=qrels)
    with open(root / "corpus.jsonl", "a") as f:
        f.write(json.dumps({"_id": "blank", "title": "", "text": "  "}) + "\n")
    ds = load_dataset(DatasetSpec(name="q", path=str(root)))
    assert sorted(ds.qrels.rows()) == [("q1", "d3", 2), ("q2", "d6", 1)]
    judged = ds.quarantine.filter(pl.col("table") == "qrels")
    assert sorted(judged["doc_id"]) == ["blank", "nope"] and ds.corpus_quarantined == 1
    _, means = score_run(bm25_run(ds.corpus, ds.queries), qrels_dict(ds.qrels))
    assert means["ndcg_cut_10"] > 0.5  # both queries answerable by BM25 on the tiny corpus


def test_qrels_naming_unknown_queries_fail(tmp_path):
    root = write_beir(tmp_path / "q", queries=TINY_QUERIES[:1])
    with pytest.raises(DatasetError, match="missing from queries.jsonl"):
        load_dataset(DatasetSpec(name="q", path=str(root)))


def test_parquet_and_jsonl_files_source(tmp_path):
    path = tmp_path / "notes.parquet"
    pl.DataFrame({"note_id": ["a", "b"], "body": ["first note text", "second note text"]}).write_parquet(path)
    spec = DatasetSpec(name="notes", source="files", corpus=str(path), id_field="note_id", text_field="body")
    ds = load_dataset(spec)
    assert ds.corpus.rows() == [("a", "", "first note text"), ("b", "", "second note text")]
    assert not ds.has_judgments


def test_dataset_names_cannot_escape_folders():
    for bad in ("../etc", "a/b", "", ".hidden"):
        with pytest.raises(DatasetError, match="not allowed"):
            DatasetSpec(name=bad)


def test_registry_resolves_relative_paths_and_overrides(tmp_path):
    write_beir(tmp_path / "data" / "tiny")
    (tmp_path / "datasets.yaml").write_text(
        "datasets:\n  tiny:\n    source: beir\n    path: data/tiny\n    overrides: {synthetic_queries: {documents_to_sample: 3}}\n"
    )
    spec = load_registry(tmp_path / "datasets.yaml")["tiny"]
    assert spec.path == str((tmp_path / "data" / "tiny").resolve())
    assert spec.extra["overrides"]["synthetic_queries"]["documents_to_sample"] == 3


def test_project_registry_lists_demo_and_shared_datasets():
    registry = load_registry()
    assert {"demo", "cacm", "msmarco-5k"} <= set(registry)


def test_demo_dataset_is_offline_and_deterministic():
    a = load_dataset(DatasetSpec(name="demo", source="demo", max_documents=50)).corpus
    b = load_dataset(DatasetSpec(name="demo", source="demo", max_documents=50)).corpus
    assert a.equals(b) and a.height == 50 and a["doc_id"].n_unique() == 50


def test_ir_datasets_offline_fails_fast_with_local_folder_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "ird"))
    with pytest.raises(DatasetError, match="source: beir, path"):
        load_dataset(DatasetSpec(name="scifact", source="ir_datasets", id="beir/scifact/test"))


def test_passage_text_joins_title_and_text():
    assert passage_text("T", "body") == "T: body"
    assert passage_text("", "body") == "body"
    assert passage_text("T", "") == "T"


@pytest.mark.skipif(not (SHARED / "cacm").exists(), reason="../shared not present")
def test_shared_cacm_loads_with_judgments():
    ds = load_dataset(DatasetSpec(name="cacm", path=str(SHARED / "cacm")))
    assert ds.corpus.height == 3204 and ds.queries.height == 52 and ds.qrels.height == 796


def test_add_and_remove_edit_the_project_datasets_file_keeping_comments_and_entries(tmp_path, tiny_beir):
    from pathlib import Path

    from retriever_forge.datasets import DEFAULT_DATASETS_FILE, add_dataset, remove_dataset

    registry = tmp_path / "datasets.yaml"
    original = Path(DEFAULT_DATASETS_FILE).read_text()
    registry.write_text(original)
    before = load_registry(registry)
    spec = add_dataset("tiny", {"source": "beir", "path": str(tiny_beir), "description": "six passages"}, registry)
    assert spec.path == str(tiny_beir) and load_dataset(spec).corpus.height == 6
    after = load_registry(registry)
    assert set(after) == set(before) | {"tiny"} and all(after[n] == before[n] for n in before)
    assert registry.read_text().startswith(original.rstrip("\n"))  # comments and entries untouched
    with pytest.raises(DatasetError, match="exists already"):
        add_dataset("tiny", {"source": "demo"}, registry)
    with pytest.raises(DatasetError, match="not allowed"):
        add_dataset("../evil", {"source": "demo"}, registry)
    with pytest.raises(DatasetError, match="unknown_key"):
        add_dataset("typo", {"source": "demo", "unknown_key": 1}, registry)
    remove_dataset("cacm", registry)
    assert set(load_registry(registry)) == set(before) - {"cacm"} | {"tiny"}
    assert "# Named datasets" in registry.read_text() and "msmarco-5k" in registry.read_text()
    remove_dataset("tiny", registry)
    remove_dataset("scifact", registry)
    assert set(load_registry(registry)) == {"demo", "msmarco-5k"}
    assert load_registry(registry)["demo"] == before["demo"]  # its overrides block survived its neighbours' removal
    with pytest.raises(DatasetError, match="no dataset 'cacm'"):
        remove_dataset("cacm", registry)


def test_add_creates_a_missing_datasets_file(tmp_path):
    from retriever_forge.datasets import add_dataset

    registry = tmp_path / "sub" / "datasets.yaml"
    add_dataset("demo", {"source": "demo", "max_documents": 20}, registry)
    assert load_registry(registry)["demo"].max_documents == 20
