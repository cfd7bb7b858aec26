"""Benchmarks: BM25 (bm25s), dense retrieval runs, and ``pytrec_eval`` scoring.

Measures (``pytrec_eval`` names): ``ndcg_cut_10``, ``recall_100``, ``map``, ``recip_rank``.
A run is ``{query_id: {doc_id: score}}``; qrels are ``{query_id: {doc_id: grade}}``.

Example:
    >>> from retriever_forge.evaluation import score_run
    >>> qrels = {"q1": {"d1": 1}, "q2": {"d3": 2}}
    >>> run = {"q1": {"d1": 2.0, "d2": 1.0}, "q2": {"d1": 2.0, "d3": 1.0}}
    >>> per_query, agg = score_run(run, qrels)
    >>> agg["recip_rank"], per_query.filter(query_id="q2")["recip_rank"].item()
    (0.75, 0.5)
"""

from __future__ import annotations

import numpy as np
import polars as pl

from retriever_forge.datasets import passage_text
from retriever_forge.search import exact_search, hits_to_run

MEASURES = ("ndcg_cut_10", "recall_100", "map", "recip_rank")
_TREC_MEASURES = {"ndcg_cut.10", "recall.100", "map", "recip_rank"}

Run = dict[str, dict[str, float]]


def qrels_dict(qrels: pl.DataFrame) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for q, d, r in qrels.select("query_id", "doc_id", "relevance").iter_rows():
        out.setdefault(q, {})[d] = int(r)
    return out


def score_run(run: Run, qrels: dict[str, dict[str, int]]) -> tuple[pl.DataFrame, dict[str, float]]:
    """Per-query measures and their mean over judged queries (unretrieved queries score 0)."""
    import pytrec_eval

    evaluator = pytrec_eval.RelevanceEvaluator(qrels, _TREC_MEASURES)
    # A judged query with an empty run would be silently skipped by trec_eval; score it 0 instead.
    full_run = {q: (run.get(q) or {"__none__": 0.0}) for q in qrels}
    results = evaluator.evaluate(full_run)
    rows = [{"query_id": q, **{m: float(results[q].get(m, 0.0)) for m in MEASURES}} for q in sorted(results)]
    per_query = pl.DataFrame(rows, schema={"query_id": pl.String, **{m: pl.Float64 for m in MEASURES}})
    agg = {m: round(float(per_query[m].mean()), 4) if per_query.height else 0.0 for m in MEASURES}
    return per_query, agg


def bm25_run(corpus: pl.DataFrame, queries: pl.DataFrame, k: int = 100) -> Run:
    """BM25 with ``bm25s`` (English stopwords, Snowball stemming when PyStemmer is installed)."""
    import bm25s

    try:
        import Stemmer

        stemmer = Stemmer.Stemmer("english")
    except ImportError:
        stemmer = None
    docs = [passage_text(t, x) for t, x in zip(corpus["title"], corpus["text"], strict=True)]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(docs, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    q_tokens = bm25s.tokenize(queries["text"].to_list(), stopwords="en", stemmer=stemmer, show_progress=False)
    k = min(k, corpus.height)
    idx, scores = retriever.retrieve(q_tokens, k=k, show_progress=False, n_threads=1)
    doc_ids = corpus["doc_id"].to_list()
    run: Run = {}
    for qi, qid in enumerate(queries["query_id"]):
        run[qid] = {doc_ids[int(j)]: float(s) for j, s in zip(idx[qi], scores[qi], strict=True) if s > 0}
    return run


def dense_run(query_embeddings: np.ndarray, corpus_embeddings: np.ndarray, query_ids: list[str], doc_ids: list[str], k: int = 100) -> Run:
    scores, idx = exact_search(query_embeddings, corpus_embeddings, k=k)
    return hits_to_run(scores, idx, query_ids, doc_ids)


def scoreboard_markdown(rows: list[dict], judgments: str) -> str:
    """The aggregate table shown in the UI and printed at the end of a run."""
    header = "| system | nDCG@10 | Recall@100 | MAP | MRR | queries |\n|---|---|---|---|---|---|"
    lines = [
        f"| {r['system']} | {r['ndcg_cut_10']:.4f} | {r['recall_100']:.4f} | {r['map']:.4f} | {r['recip_rank']:.4f} | {r['queries']} |"
        for r in rows
    ]
    note = (
        "Judgments: **human** (the dataset's qrels)."
        if judgments == "human"
        else "Judgments: **SYNTHETIC** — held-out LLM-generated queries with LLM pseudo-judgments; "
        "not comparable to scores on human judgments."
    )
    return "\n".join([header, *lines, "", note])
