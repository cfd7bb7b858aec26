import polars as pl

from retriever_forge.orchestration.assets.generation import judged_pairs_markdown, query_sample_markdown
from retriever_forge.orchestration.assets.training import filter_decisions_markdown, negatives_sample_markdown
from retriever_forge.samples import stratified_sample

CORPUS = pl.DataFrame({"doc_id": ["d1", "d2"], "title": ["", ""], "text": ["Quicksort partitions an array.", "A hash table maps keys."]})


def test_stratified_sample_covers_every_stratum_including_nulls_and_is_seeded():
    df = pl.DataFrame({"style": ["q"] * 6 + ["k"] * 2, "dropped_by": [None, None, None, "copy", "copy", None, None, "len"], "i": range(8)})
    sample = stratified_sample(df, ["style", "dropped_by"], per_group=1, seed=3)
    assert set(zip(sample["style"], sample["dropped_by"], strict=True)) == {("q", None), ("q", "copy"), ("k", None), ("k", "len")}
    assert sample.equals(stratified_sample(df, ["style", "dropped_by"], per_group=1, seed=3))


def test_query_sample_shows_passage_outcome_and_drop_reason():
    queries = pl.DataFrame({"query_id": ["a", "b"], "doc_id": ["d1", "d2"], "text": ["how does quicksort work", ""], "style": ["question", "claim"],
                            "split": ["train", "train"], "dropped_by": [None, "unparseable"], "raw_output": ["", "<garbage>"]})  # fmt: skip
    md = query_sample_markdown(queries, CORPUS, seed=0)
    assert "Quicksort partitions an array." in md and "dropped: unparseable" in md and "(unparseable: <garbage>)" in md and "| kept |" in md


def test_judged_pairs_and_negatives_samples_carry_text_and_reasons():
    queries = pl.DataFrame({"query_id": ["a"], "text": ["how does quicksort work"]})
    judgments = pl.DataFrame({"query_id": ["a", "a"], "doc_id": ["d1", "d2"], "pair_type": ["source", "candidate"], "grade": [3, 0],
                              "expected_grade": [2.9, 0.2]})  # fmt: skip
    md = judged_pairs_markdown(judgments, queries, CORPUS)
    assert "| source | 3 | 2.9 | how does quicksort work | Quicksort partitions an array. |" in md
    candidates = pl.DataFrame({"query_id": ["a", "a"], "doc_id": ["d2", "d1"], "rank": [2, 1], "score": [0.5, 0.9], "positive_score": [0.9, 0.9],
                               "judged_grade": [None, 2.5], "dropped_by": [None, "judge"]})  # fmt: skip
    md = negatives_sample_markdown(candidates, queries, CORPUS, seed=0)
    assert (
        "judge: the LLM judge graded it relevant" in md and "kept: a hard negative for training" in md and "A hash table maps keys." in md
    )
    assert "| margin | 2 | scored too close" in filter_decisions_markdown({"kept": 5, "margin": 2})
