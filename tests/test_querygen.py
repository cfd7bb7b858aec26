from pathlib import Path

import numpy as np
import polars as pl
import pytest

from retriever_forge.datasets import passage_text
from retriever_forge.querygen import (
    QueryGenerationConfig,
    clean_query,
    drop_reason,
    generate_synthetic_queries,
    generation_summary,
    near_copy,
    round_trip_filter,
)
from tests.conftest import TINY_CORPUS, ScriptedLLM

CORPUS = pl.DataFrame([{"doc_id": d["_id"], "title": d["title"], "text": d["text"]} for d in TINY_CORPUS])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("What is quicksort?", "What is quicksort?"),
        ('Query: "how does tcp work"', "how does tcp work"),
        ("\n\n1. hash table lookup time\n2. other", "hash table lookup time"),
        ("Example 3\nPassage: blah", ""),
        ("", ""),
        ("  Question:   what   is a parser ", "what is a parser"),
    ],
)
def test_clean_query(raw, expected):
    assert clean_query(raw) == expected


def test_filters_have_known_answers():
    cfg = QueryGenerationConfig(min_words=2, max_words=5)
    passage = "Quicksort partitions an array around a pivot and sorts the parts recursively."
    assert drop_reason("", passage, cfg) == "unparseable"
    assert drop_reason("quicksort", passage, cfg) == "too_short"
    assert drop_reason("one two three four five six", passage, cfg) == "too_long"
    assert drop_reason("how does quicksort work", passage, cfg) is None
    assert near_copy("partitions an array around a pivot and sorts", passage)
    assert not near_copy("how does quicksort choose a pivot element", passage)


def test_generation_records_lineage_and_drops_duplicates():
    llm = ScriptedLLM(answers=lambda p: "same query for all")
    cfg = QueryGenerationConfig(documents_to_sample=None, round_trip_k=None, styles=("question",))
    q = generate_synthetic_queries(CORPUS, llm, cfg, completion_llm=llm)
    assert q.height == 6
    assert q["dropped_by"].to_list() == [None] + ["duplicate"] * 5
    row = q.row(0, named=True)
    assert row["template_id"] == "queries/inpars_question_v1" and len(row["template_hash"]) == 64
    assert row["model_hash"] == "0" * 64 and row["raw_output"] == "same query for all"
    assert generation_summary(q)["dropped"] == {"duplicate": 5}


def test_styles_round_robin_and_splits_are_by_passage():
    llm = ScriptedLLM(answers=lambda p: f"query {hash(p) % 100000} words")
    cfg = QueryGenerationConfig(documents_to_sample=None, queries_per_document=3, round_trip_k=None, dev_fraction=0.5)
    q = generate_synthetic_queries(CORPUS, llm, cfg, completion_llm=llm)
    assert q.group_by("doc_id").agg(pl.col("style").n_unique())["style"].to_list() == [3] * 6
    assert (q.group_by("doc_id").agg(pl.col("split").n_unique())["split"] == 1).all()


def test_round_trip_filter_drops_queries_whose_source_is_not_retrieved():
    q = pl.DataFrame({"query_id": ["a", "b", "c"], "doc_id": ["d1", "d2", "d3"], "text": ["qa", "qb", "qc"],
                      "dropped_by": [None, None, "copy"], "split": ["train"] * 3})  # fmt: skip
    corpus = np.eye(3, dtype=np.float32)
    vectors = {"qa": [1, 0, 0], "qb": [1, 0.1, 0]}  # b's nearest is d1, not its source d2
    encoded = []

    def encode(texts):
        encoded.append(texts)
        return np.array([vectors[t] for t in texts], dtype=np.float32)

    out = round_trip_filter(q, encode, corpus, ["d1", "d2", "d3"], k=1)
    assert out["dropped_by"].to_list() == [None, "round_trip", "copy"]
    assert encoded == [["qa", "qb"]]  # only the kept queries are encoded


def test_same_seed_same_table():
    cfg = QueryGenerationConfig(documents_to_sample=3, round_trip_k=None, seed=7)
    a = generate_synthetic_queries(CORPUS, None, cfg, completion_llm=ScriptedLLM(answers=lambda p: p[-40:]))
    b = generate_synthetic_queries(CORPUS, None, cfg, completion_llm=ScriptedLLM(answers=lambda p: p[-40:]))
    assert a.equals(b)


def test_completion_templates_need_the_completion_model():
    cfg = QueryGenerationConfig(documents_to_sample=2, round_trip_k=None)
    with pytest.raises(ValueError, match="completion_llm"):
        generate_synthetic_queries(CORPUS, ScriptedLLM(), cfg)


def test_prompt_edit_changes_template_hash_but_comment_edit_does_not(tmp_path):
    from retriever_forge.prompts import load_template

    base = load_template("queries/inpars_question_v1")
    src = (Path(__file__).parents[1] / "retriever_forge/prompts/queries/inpars_question_v1.txt").read_text()
    (tmp_path / "comment.txt").write_text("# another comment\n" + src)
    (tmp_path / "edited.txt").write_text(src.replace("Example 1:", "Example one:"))
    assert load_template(str(tmp_path / "comment.txt")).hash == base.hash
    assert load_template(str(tmp_path / "edited.txt")).hash != base.hash


def test_crop_queries_are_spans_of_their_passage_split_with_it():
    cfg = QueryGenerationConfig(documents_to_sample=None, queries_per_document=1, crop_queries_per_document=2, crop_words=(3, 5))
    q = generate_synthetic_queries(CORPUS, None, cfg, completion_llm=ScriptedLLM(answers=lambda p: "an llm query " + p[-12:]))
    crops = q.filter(pl.col("style") == "crop")
    # Copies by design: never dropped as copies (only a repeated span, as a duplicate).
    assert crops.height == 2 * CORPUS.height and set(crops["dropped_by"].drop_nulls()) <= {"duplicate"}
    passages = {d: passage_text(t, x) for d, t, x in CORPUS.select("doc_id", "title", "text").iter_rows()}
    assert all(span in passages[d] for d, span in crops.select("doc_id", "text").iter_rows())
    assert all(3 <= len(t.split()) <= 5 for t in crops["text"])
    split = dict(q.filter(pl.col("style") != "crop").select("doc_id", "split").iter_rows())
    assert all(split[d] == s for d, s in crops.select("doc_id", "split").iter_rows())  # never straddles splits
    assert set(crops["model_id"]) == {"corpus"}
    off = generate_synthetic_queries(CORPUS, None, QueryGenerationConfig(documents_to_sample=None), completion_llm=ScriptedLLM())
    assert "crop" not in set(off["style"])
