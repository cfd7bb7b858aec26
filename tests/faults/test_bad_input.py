"""Bad corpus input: every bad row is a clear error (file:line: problem) or, with
``on_bad_rows: quarantine``, set aside with its reason and counted by the corpus asset check."""

from __future__ import annotations

import json

import dagster as dg
import polars as pl
import pytest

from retriever_forge.artifacts import ArtifactStore
from retriever_forge.datasets import DatasetError, DatasetSpec, load_dataset, load_registry
from tests.conftest import TINY_CORPUS, TINY_QRELS, write_beir

pytestmark = pytest.mark.faults

MEGABYTE_TEXT = "word " * 400_000  # 2 MB in one passage

BAD_LINES = {
    "malformed JSON": (b'{"_id": "x1", "text": \n', "malformed JSON"),
    "non-UTF-8": (b'{"_id": "x2", "text": "caf\xe9"}\n', "not valid UTF-8"),
    "not an object": (b'["x3", "text"]\n', "expected a JSON object"),
    "missing id": (json.dumps({"title": "t", "text": "no id here"}).encode() + b"\n", "missing document id field '_id'"),
    "blank id": (json.dumps({"_id": "  ", "text": "blank id"}).encode() + b"\n", "missing document id field '_id'"),
    "duplicate id": (json.dumps({"_id": "d1", "text": "a second d1"}).encode() + b"\n", "duplicate document id 'd1' (first at line 1)"),
    "text not a string": (json.dumps({"_id": "x4", "text": {"nested": 1}}).encode() + b"\n", "field 'text' must be a string"),
    "megabyte passage": (json.dumps({"_id": "x5", "text": MEGABYTE_TEXT}).encode() + b"\n", "exceeds max_passage_chars=100000"),
}


def _beir_with(tmp_path, *lines: bytes):
    root = write_beir(tmp_path / "bad")
    with open(root / "corpus.jsonl", "ab") as f:
        for line in lines:
            f.write(line)
    return root


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_each_bad_row_is_an_error_naming_file_and_line(tmp_path, case):
    line, problem = BAD_LINES[case]
    root = _beir_with(tmp_path, line)
    with pytest.raises(DatasetError) as info:
        load_dataset(DatasetSpec(name="bad", path=str(root)))
    assert str(info.value).startswith(f"{root / 'corpus.jsonl'}:7: ")
    assert problem in str(info.value)


def test_quarantine_policy_sets_every_bad_row_aside_and_loads_the_rest(tmp_path):
    lines = [line for line, _ in BAD_LINES.values()]
    blank = [json.dumps({"_id": "ws", "title": " ", "text": "\n\t  \u3000"}).encode() + b"\n",
             json.dumps({"_id": "notext", "title": ""}).encode() + b"\n"]  # fmt: skip
    root = _beir_with(tmp_path, *lines, *blank)
    ds = load_dataset(DatasetSpec(name="bad", path=str(root), on_bad_rows="quarantine"))
    assert ds.corpus["doc_id"].to_list() == [d["_id"] for d in TINY_CORPUS]  # the good rows, first d1 kept
    assert ds.corpus.filter(pl.col("doc_id") == "d1")["text"].item() == TINY_CORPUS[0]["text"]
    q = ds.quarantine
    assert q["table"].unique().to_list() == ["corpus"] and ds.corpus_quarantined == len(BAD_LINES) + 2
    assert q["line"].to_list() == list(range(7, 7 + len(BAD_LINES) + 2))
    assert set(q["file"]) == {str(root / "corpus.jsonl")}
    for (_, problem), reason in zip(BAD_LINES.values(), q["reason"], strict=False):
        assert problem in reason
    assert q["reason"].to_list()[-2:] == ["empty passage", "empty passage"]
    assert max(ds.corpus["text"].str.len_chars()) < 1000  # the 2 MB passage never reached the corpus
    assert ds.has_judgments and ds.qrels.height == 2


def test_max_passage_chars_is_configurable(tmp_path):
    root = _beir_with(tmp_path, json.dumps({"_id": "long", "text": "x" * 5000}).encode() + b"\n")
    assert "long" in load_dataset(DatasetSpec(name="ok", path=str(root))).corpus["doc_id"].to_list()
    with pytest.raises(DatasetError, match=r"corpus.jsonl:7: passage of 5000 characters exceeds max_passage_chars=1000"):
        load_dataset(DatasetSpec(name="strict", path=str(root), max_passage_chars=1000))


def test_parquet_corpus_rows_get_the_same_policy(tmp_path):
    path = tmp_path / "c.parquet"
    pl.DataFrame({"_id": ["a", "b", "a", None], "text": ["first", "second", "dup", "no id"]}).write_parquet(path)
    with pytest.raises(DatasetError, match=r"c.parquet:4: duplicate document id 'a' \(first at line 2\)"):
        load_dataset(DatasetSpec(name="p", source="files", corpus=str(path)))
    ds = load_dataset(DatasetSpec(name="p", source="files", corpus=str(path), on_bad_rows="quarantine"))
    assert ds.corpus["doc_id"].to_list() == ["a", "b"]
    assert [r.split(" (")[0] for r in ds.quarantine["reason"]] == ["duplicate document id 'a'", "missing document id field '_id'"]


def test_qrels_naming_unknown_queries_and_documents_are_quarantined(tmp_path):
    qrels = TINY_QRELS + "q1\tnope\t1\nq9\td1\t1\nq2\tblank\t1\n"
    corpus = [*TINY_CORPUS, {"_id": "blank", "title": "", "text": "  "}]
    root = write_beir(tmp_path / "q", corpus=corpus, qrels=qrels)
    with pytest.raises(DatasetError, match="missing from queries.jsonl, e.g. 'q9'"):
        load_dataset(DatasetSpec(name="q", path=str(root)))
    ds = load_dataset(DatasetSpec(name="q", path=str(root), on_bad_rows="quarantine"))
    assert sorted(ds.qrels.rows()) == [("q1", "d3", 2), ("q2", "d6", 1)]
    judged = ds.quarantine.filter(pl.col("table") == "qrels")
    assert sorted(judged["reason"]) == sorted(["judgment names unknown query 'q9'", "judgment for query 'q1' names unknown document",
                                               "judgment for query 'q2' names unknown document"])  # fmt: skip
    assert ds.corpus_quarantined == 1  # the blank passage; judgments are counted apart


def test_bad_query_lines_are_errors_or_quarantined(tmp_path):
    root = write_beir(tmp_path / "q")
    with open(root / "queries.jsonl", "a") as f:
        f.write('{"_id": "q1", "text": "again"}\n{"_id": "q3"\n')
    with pytest.raises(DatasetError, match=r"queries.jsonl:4: malformed JSON"):  # lines are parsed first
        load_dataset(DatasetSpec(name="q", path=str(root)))
    ds = load_dataset(DatasetSpec(name="q", path=str(root), on_bad_rows="quarantine"))
    assert ds.queries.sort("query_id")["text"].to_list() == ["shortest path algorithm", "balanced tree index for lookups"]
    assert ds.quarantine.filter(pl.col("table") == "queries")["line"].to_list() == [4, 3]
    lines = (root / "queries.jsonl").read_text().splitlines(keepends=True)
    (root / "queries.jsonl").write_text("".join(lines[:3]))  # without the malformed line
    with pytest.raises(DatasetError, match=r"queries.jsonl:3: duplicate query id 'q1'"):
        load_dataset(DatasetSpec(name="q", path=str(root)))


def test_policy_comes_from_the_datasets_file_and_is_validated(tmp_path):
    write_beir(tmp_path / "data")
    (tmp_path / "datasets.yaml").write_text(
        "datasets:\n  nightly: {source: beir, path: data, on_bad_rows: quarantine, max_passage_chars: 500, max_quarantine_share: 0.2}\n"
    )
    spec = load_registry(tmp_path / "datasets.yaml")["nightly"]
    assert (spec.on_bad_rows, spec.max_passage_chars, spec.max_quarantine_share) == ("quarantine", 500, 0.2)
    for bad in ({"on_bad_rows": "ignore"}, {"max_passage_chars": 0}, {"max_quarantine_share": 2.0}):
        with pytest.raises(DatasetError, match=next(iter(bad))):
            DatasetSpec(name="x", **bad)


def _materialize_corpus(tmp_path, monkeypatch, spec_yaml: str):
    """Materialize only the corpus asset for partition 'cacm', which the datasets file redefines."""
    from retriever_forge.orchestration.assets.common import sync_dataset_partitions
    from retriever_forge.orchestration.assets.data import corpus
    from retriever_forge.orchestration.resources import ArtifactStoreResource, artifact_ref_io_manager

    (tmp_path / "datasets.yaml").write_text(spec_yaml)
    monkeypatch.setenv("RETRIEVER_FORGE_DATASETS", str(tmp_path / "datasets.yaml"))
    home = tmp_path / "home"
    instance = dg.DagsterInstance.ephemeral()
    sync_dataset_partitions(instance)
    result = dg.materialize(
        [corpus], partition_key="cacm", raise_on_error=False, instance=instance,
        resources={"artifact_store": ArtifactStoreResource(root=str(home), work_dir=str(home / "work")),
                   "artifact_io": artifact_ref_io_manager},
    )  # fmt: skip
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    return result, checks, ArtifactStore(home)


def test_corpus_asset_check_surfaces_the_quarantine(tmp_path, monkeypatch):
    root = _beir_with(tmp_path, *(line for line, _ in BAD_LINES.values()))
    yaml = f"datasets:\n  cacm: {{source: beir, path: {root}, on_bad_rows: quarantine, max_quarantine_share: 0.5}}\n"
    result, checks, store = _materialize_corpus(tmp_path, monkeypatch, yaml)
    assert not result.success  # the check is blocking: the run stops before anything downstream
    check = checks["corpus_quarantine"]
    assert not check.passed  # 8 of 14 rows set aside > 0.5
    assert check.metadata["quarantined_corpus_rows"].value == len(BAD_LINES)
    table = pl.read_parquet(check.metadata["quarantine_table"].value)
    assert table.height == len(BAD_LINES) and "malformed JSON" in table["reason"][0]
    kinds = {ref.kind for ref, _ in store.iter_refs()}
    assert {"corpus", "corpus_quarantine"} <= kinds
    # a share under the threshold passes
    root2 = _beir_with(tmp_path / "two", BAD_LINES["duplicate id"][0])
    yaml = f"datasets:\n  cacm: {{source: beir, path: {root2}, on_bad_rows: quarantine, max_quarantine_share: 0.5}}\n"
    result, checks, _ = _materialize_corpus(tmp_path / "two", monkeypatch, yaml)
    assert result.success and checks["corpus_quarantine"].passed
    assert checks["corpus_quarantine"].metadata["quarantined_corpus_rows"].value == 1


def test_corpus_asset_fails_with_the_file_and_line_under_the_error_policy(tmp_path, monkeypatch):
    root = _beir_with(tmp_path, BAD_LINES["non-UTF-8"][0])
    result, _, store = _materialize_corpus(tmp_path, monkeypatch, f"datasets:\n  cacm: {{source: beir, path: {root}}}\n")
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert f"{root / 'corpus.jsonl'}:7: not valid UTF-8" in str(failure.event_specific_data.error)
    assert list(store.iter_refs()) == []  # nothing was published
