"""`diff` on hand-built lineages with known differences: it blames exactly the changed recipe."""

import polars as pl

from retriever_forge.artifacts import ArtifactStore
from retriever_forge.lineage_diff import diff_lineages, diff_text
from retriever_forge.provenance import build_manifest

PROMPT = "Passage: {passage}\nWrite a question.\nQuestion:"


def _lineage(store, *, prompt_text=PROMPT, depth=100, corpus_rows=(("d1", "alpha"), ("d2", "beta")), scores=(0.5, 0.7)):
    corpus = store.put_table(pl.DataFrame(list(corpus_rows), schema=["doc_id", "text"], orient="row"), "corpus")
    store.write_manifest(corpus, build_manifest(corpus, asset="corpus", upstream={}, partition="p", config={"dataset": {"name": "p"}}))
    queries = store.put_table(
        pl.DataFrame({"query_id": ["q1"], "text": ["q"], "template_hash": [str(hash(prompt_text))]}), "synthetic_queries"
    )
    prompt = {"id": "queries/q", "hash": str(hash(prompt_text)), "format": "completion", "text": prompt_text}
    store.write_manifest(queries, build_manifest(queries, asset="synthetic_queries", upstream={"corpus": corpus}, partition="p",
                                                 config={"temperature": 0.0}, prompts={"question": prompt}))  # fmt: skip
    model = store.put_json({"trained_on": queries.hash}, "fine_tuned_encoder")
    store.write_manifest(model, build_manifest(model, asset="fine_tuned_encoder", upstream={"synthetic_queries": queries}, partition="p",
                                               models={"fine_tuned_encoder": {"id": "fine_tuned_encoder", "weights_hash": "x"}}))  # fmt: skip
    table = pl.DataFrame({"system": ["bm25", "bm25", "fine-tuned", "fine-tuned"], "query_id": ["q1", "q2"] * 2,
                          "ndcg_cut_10": [0.5, 0.5, *scores]})  # fmt: skip
    board = store.put_table(table, "benchmark_scores")
    store.write_manifest(board, build_manifest(
        board, asset="benchmark_scores", upstream={"corpus": corpus, "fine_tuned_encoder": model}, partition="p", config={"depth": depth},
        models={"fine_tuned_encoder": {"id": "fine_tuned_encoder", "weights_hash": model.hash}}))  # fmt: skip
    return board


def test_one_prompt_line_and_one_config_value_are_the_two_changes(tmp_path):
    store = ArtifactStore(tmp_path)
    a = _lineage(store)
    b = _lineage(store, prompt_text=PROMPT.replace("Write a question.", "Write a short question."), depth=50, scores=(0.6, 0.8))
    d = diff_lineages(store, a.hash, b.hash)
    assert [(c["kind"], c.get("key") or c.get("role"), c["assets"]) for c in d["summary"]] == [
        ("prompt", "question", ["synthetic_queries"]), ("config", "depth", ["benchmark_scores"])]  # fmt: skip
    prompt = d["summary"][0]["diff"]
    assert "-Write a question." in prompt and "+Write a short question." in prompt
    assert [c["asset"] for c in d["consequences"]] == ["fine_tuned_encoder"]
    tuned = next(r for r in d["score_deltas"] if r["system"] == "fine-tuned")
    assert tuned["delta"] == 0.1 and tuned["queries_better"] == 2
    assert next(r for r in d["score_deltas"] if r["system"] == "bm25")["delta"] == 0.0
    text = diff_text(d)
    assert "config depth: 100 → 50" in text and "+Write a short question." in text and "+0.1000" in text


def test_corpus_rows_added_removed_changed_with_ids(tmp_path):
    store = ArtifactStore(tmp_path)
    a = _lineage(store)
    b = _lineage(store, corpus_rows=(("d1", "alpha!"), ("d3", "gamma")), scores=(0.5, 0.6))
    d = diff_lineages(store, a.hash, b.hash)
    (rows,) = [c for c in d["summary"] if c["kind"] == "rows"]
    assert (rows["added_ids"], rows["removed_ids"], rows["changed_ids"]) == (["d3"], ["d2"], ["d1"])
    assert [c["kind"] for c in d["summary"]] == ["rows"]


def test_identical_artifacts(tmp_path):
    store = ArtifactStore(tmp_path)
    a = _lineage(store)
    assert diff_lineages(store, a.hash, a.hash)["identical"]


def test_diff_command_json(tmp_path, capsys):
    import json

    from retriever_forge.orchestration.cli import main

    store = ArtifactStore(tmp_path)
    a, b = _lineage(store), _lineage(store, depth=10, scores=(0.4, 0.7))
    assert main(["diff", a.hash[:10], b.hash[:10], "--json", "--home", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(c["key"], c["old"], c["new"]) for c in out["summary"]] == [("depth", 100, 10)]
    assert main(["diff", "ffff", b.hash[:10], "--home", str(tmp_path)]) == 2
