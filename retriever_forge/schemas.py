"""Table schemas shared by every stage (polars dtypes).

Each table is a Parquet artifact; these schemas are what asset checks verify and what every
domain function promises to return. Row-level lineage lives in the columns themselves: a
synthetic query names its source document and generation record, a judgment its judge and
prompt, a training example its mining rank, score and filter decisions.
"""

from __future__ import annotations

import polars as pl

CORPUS = {"doc_id": pl.String, "title": pl.String, "text": pl.String}
QUERIES = {"query_id": pl.String, "text": pl.String}
QRELS = {"query_id": pl.String, "doc_id": pl.String, "relevance": pl.Int64}

SYNTHETIC_QUERIES = {
    "query_id": pl.String,
    "doc_id": pl.String,  # the passage the query was generated from (its positive)
    "text": pl.String,  # the cleaned query ("" when the raw output could not be parsed)
    "style": pl.String,
    "template_id": pl.String,
    "template_hash": pl.String,
    "model_id": pl.String,
    "model_hash": pl.String,
    "sampling": pl.String,  # JSON of SamplingParams
    "seed": pl.Int64,
    "raw_output": pl.String,
    "dropped_by": pl.String,  # null when kept; else the filter that dropped it
    "split": pl.String,  # train / dev / test (test: held-out pseudo-judged eval queries)
}

JUDGMENTS = {
    "query_id": pl.String,
    "doc_id": pl.String,
    "pair_type": pl.String,  # "source" (query's own passage) or "candidate" (retrieved)
    "retrieval_rank": pl.Int64,  # base-retriever rank of doc for query (0 for source pairs)
    "grade": pl.Int64,  # argmax label 0..3
    "expected_grade": pl.Float64,  # sum_g g * p(g)
    "grade_probs": pl.List(pl.Float64),  # p(0..3), restricted to the label tokens
    "judge_model_id": pl.String,
    "judge_model_hash": pl.String,
    "template_id": pl.String,
    "template_hash": pl.String,
}

HARD_NEGATIVE_CANDIDATES = {
    "query_id": pl.String,
    "positive_id": pl.String,
    "doc_id": pl.String,
    "rank": pl.Int64,  # 1-based rank under the mining encoder
    "score": pl.Float64,
    "positive_score": pl.Float64,
    "judged_grade": pl.Float64,  # expected grade from the judge, null when not judged
    "dropped_by": pl.String,  # null when kept; "margin", "judge", "guide", "window", ...
    "source": pl.String,  # "dense" or "bm25"
}

TRAINING_EXAMPLES = {
    "query_id": pl.String,
    "query": pl.String,
    "positive_id": pl.String,
    "positive_text": pl.String,
    "positive_grade": pl.Float64,
    "negative_ids": pl.List(pl.String),
    "negative_texts": pl.List(pl.String),
    "negative_grades": pl.List(pl.Float64),  # expected judge grade, 0.0 when not judged
    "negative_ranks": pl.List(pl.Int64),
    "negative_scores": pl.List(pl.Float64),
    "split": pl.String,  # train / dev
}


def check_schema(df: pl.DataFrame, schema: dict, name: str) -> list[str]:
    """Return human-readable schema problems (missing columns, wrong dtypes)."""
    problems = []
    for col, dtype in schema.items():
        if col not in df.columns:
            problems.append(f"{name}: missing column {col!r}")
        elif df.schema[col] != dtype and df.schema[col] != pl.Null:
            problems.append(f"{name}: column {col!r} is {df.schema[col]}, expected {dtype}")
    return problems


def conform(df: pl.DataFrame, schema: dict) -> pl.DataFrame:
    """Select and cast ``df`` to ``schema``'s columns and order."""
    return df.select([pl.col(c).cast(t) for c, t in schema.items()])
