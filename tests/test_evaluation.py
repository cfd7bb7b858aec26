import numpy as np
import pytest

from retriever_forge.evaluation import score_run, scoreboard_markdown


def test_measures_match_hand_computed_values():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1, "d3": 1}}
    run = {"q1": {"d9": 3.0, "d1": 2.0}, "q2": {"d2": 3.0, "d3": 2.0}}
    per_query, agg = score_run(run, qrels)
    q1 = per_query.filter(query_id="q1").row(0, named=True)
    assert q1["recip_rank"] == 0.5 and q1["map"] == 0.5
    assert q1["ndcg_cut_10"] == pytest.approx(1 / np.log2(3))
    assert agg["recall_100"] == 1.0


def test_unretrieved_judged_query_scores_zero():
    per_query, agg = score_run({}, {"q1": {"d1": 1}})
    assert per_query.height == 1 and agg["ndcg_cut_10"] == 0.0


def test_scoreboard_labels_synthetic_judgments():
    rows = [{"system": "bm25", "ndcg_cut_10": 0.5, "recall_100": 1.0, "map": 0.4, "recip_rank": 0.6, "queries": 3}]
    assert "SYNTHETIC" in scoreboard_markdown(rows, "synthetic")
    assert "human" in scoreboard_markdown(rows, "human")
