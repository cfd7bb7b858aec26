"""Benchmarks: ``pytrec_eval`` scoring of runs, significance against the references, the scoreboard.

Measures (``pytrec_eval`` names): ``ndcg_cut_10``, ``recall_100``, ``map``, ``recip_rank``.
A run is ``{query_id: {doc_id: score}}`` (from :func:`retriever_forge.search.dense_run` and
:func:`retriever_forge.lexical.bm25_run`); qrels are ``{query_id: {doc_id: grade}}``.

Example:
    >>> from retriever_forge.evaluation import score_run
    >>> qrels = {"q1": {"d1": 1}, "q2": {"d3": 2}}
    >>> run = {"q1": {"d1": 2.0, "d2": 1.0}, "q2": {"d1": 2.0, "d3": 1.0}}
    >>> per_query, agg = score_run(run, qrels)
    >>> agg["recip_rank"], per_query.filter(query_id="q2")["recip_rank"].item()
    (0.75, 0.5)
"""

from __future__ import annotations

import polars as pl

from retriever_forge.search import Run

MEASURES = ("ndcg_cut_10", "recall_100", "map", "recip_rank")
_TREC_MEASURES = {"ndcg_cut.10", "recall.100", "map", "recip_rank"}


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


def synthetic_eval_set(queries: pl.DataFrame, judgments: pl.DataFrame, split: str = "test") -> tuple[pl.DataFrame, pl.DataFrame]:
    """Kept synthetic queries of one ``split`` and their LLM pseudo-qrels.

    ``test``: the held-out evaluation set for corpora without human judgments; ``dev``: the
    queries that choose the hybrid's fusion. The source passage counts as relevant (grade at
    least 1, as in InPars/GPL; 1 where the judge did not grade it, e.g. a judge that failed its
    self-check); retrieved candidates count when the judge graded them 2 or 3.
    """
    from retriever_forge.judging import steering_judgments

    # LLM queries only: a corpus crop (style "crop") is a copy of its passage, no test of retrieval.
    held = queries.filter(pl.col("dropped_by").is_null() & (pl.col("split") == split) & (pl.col("style") != "crop"))
    j = steering_judgments(judgments).filter(pl.col("query_id").is_in(held["query_id"].implode()))
    source_grade = j.filter(pl.col("pair_type") == "source").select("query_id", "doc_id", "grade").unique(["query_id", "doc_id"])
    sources = held.select("query_id", "doc_id").join(source_grade, on=["query_id", "doc_id"], how="left")
    qrels = pl.concat([
        sources.select("query_id", "doc_id", pl.max_horizontal(pl.col("grade").fill_null(1), pl.lit(1)).alias("relevance")),
        j.filter((pl.col("pair_type") == "candidate") & (pl.col("grade") >= 2)).select("query_id", "doc_id", pl.col("grade").alias("relevance")),
    ]).unique(["query_id", "doc_id"], keep="first").cast({"relevance": pl.Int64})  # fmt: skip
    return held.select("query_id", "text"), qrels


# Each system is compared with these references (the row's key: the reference system).
COMPARISONS = {"vs_base": "base", "vs_bm25": "bm25", "vs_hybrid_base": "hybrid-base"}
# vs_hybrid_base is asked of the systems a user would deploy instead of the zero-shot hybrid.
_HYBRID_BASE_CHALLENGERS = ("fine-tuned", "hybrid")
MOVERS = 5


def score_systems(runs: dict[str, Run], qrels: dict[str, dict[str, int]], *, seed: int = 0,
                  measure: str = "ndcg_cut_10") -> tuple[pl.DataFrame, list[dict]]:  # fmt: skip
    """Score every system, then compare each with the board's references on per-query ``measure``.

    Each row gets the aggregates, ``judged_at_10`` and, for each applicable reference in
    :data:`COMPARISONS` present on the board, ``{delta, p_value, p_value_t, p_value_holm, ci95,
    wins, ties, losses, queries}`` (see :mod:`retriever_forge.significance`). Holm's correction runs
    over the board's distinct system pairs (a pair asked from both sides counts once).

    Returns:
        (per-query table ``system, query_id, *MEASURES``, rows in the order of ``runs``).
    """
    from retriever_forge.significance import holm_adjust, judged_at_k, paired_comparison

    per_query, rows = [], []
    for system, run in runs.items():
        pq, agg = score_run(run, qrels)
        per_query.append(pq.with_columns(pl.lit(system).alias("system")))
        rows.append({"system": system, **agg, "queries": pq.height, "judged_at_10": judged_at_k(run, qrels, 10)})
    table = pl.concat(per_query).select("system", "query_id", *MEASURES)
    scores = {s: table.filter(system=s).sort("query_id")[measure].to_numpy() for s in runs}
    tests: dict[frozenset, dict] = {}
    for row in rows:
        for key, ref in COMPARISONS.items():
            system = row["system"]
            if ref not in runs or ref == system or (key == "vs_hybrid_base" and system not in _HYBRID_BASE_CHALLENGERS):
                continue
            pair = frozenset((system, ref))
            if pair not in tests:
                tests[pair] = paired_comparison(scores[system], scores[ref], seed=seed)
                tests[pair]["_from"] = system
            c = dict(tests[pair])
            if c.pop("_from") != system:  # the same test read from the other side
                c.update(delta=-c["delta"], wins=c["losses"], losses=c["wins"], ci95=[-c["ci95"][1], -c["ci95"][0]])
            row[key] = c
    pairs = list(tests)
    adjusted = dict(zip(pairs, holm_adjust([tests[p]["p_value"] for p in pairs]), strict=True))
    for row in rows:
        for key, ref in COMPARISONS.items():
            if key in row:
                row[key]["p_value_holm"] = adjusted[frozenset((row["system"], ref))]
    return table, rows


def query_movers(per_query: pl.DataFrame, runs: dict[str, Run], qrels: dict[str, dict[str, int]], query_text: dict[str, str],
                 system: str = "fine-tuned", reference: str = "base", n: int = MOVERS, measure: str = "ndcg_cut_10") -> dict:  # fmt: skip
    """The ``n`` queries ``system`` gained most and lost most on against ``reference``.

    Each entry: query id and text, both scores, the delta, and the rank of the best-ranked
    relevant passage under each system (``None``: not retrieved within the run's depth).
    """
    from retriever_forge.significance import best_relevant_rank

    a = per_query.filter(system=system).select("query_id", pl.col(measure).alias("after"))
    b = per_query.filter(system=reference).select("query_id", pl.col(measure).alias("before"))
    joined = a.join(b, on="query_id").with_columns((pl.col("after") - pl.col("before")).alias("delta"))

    def entries(df: pl.DataFrame) -> list[dict]:
        return [{"query_id": r["query_id"], "text": query_text.get(r["query_id"], ""), "delta": round(r["delta"], 4),
                 reference: round(r["before"], 4), system: round(r["after"], 4),
                 "best_relevant_rank": {reference: best_relevant_rank(runs[reference].get(r["query_id"], {}), qrels.get(r["query_id"], {})),
                                        system: best_relevant_rank(runs[system].get(r["query_id"], {}), qrels.get(r["query_id"], {}))}}
                for r in df.iter_rows(named=True)]  # fmt: skip

    gained = joined.filter(pl.col("delta") > 0).sort(["delta", "query_id"], descending=[True, False]).head(n)
    lost = joined.filter(pl.col("delta") < 0).sort(["delta", "query_id"]).head(n)
    return {"system": system, "reference": reference, "measure": measure, "gained": entries(gained), "lost": entries(lost)}


def _judged(row: dict) -> str:
    return f"{row['judged_at_10']:.2f}" if "judged_at_10" in row else "–"


def _mark(comparison: dict | None) -> str:
    if not comparison:
        return "–"
    star = r" **\***" if comparison["p_value_holm"] < 0.05 else ""
    return f"{comparison['delta']:+.4f} (p={comparison['p_value_holm']:.3f}){star}"


def scoreboard_markdown(rows: list[dict], judgments: str, notes: list[str] | None = None) -> str:
    """The aggregate table shown in the UI and printed at the end of a run, significance marked."""

    def name(r: dict) -> str:  # a fine-tuned model that kept the base weights says so in its row
        return f"{r['system']} (= base weights)" if r.get("kept_base_weights") and r["system"] == "fine-tuned" else r["system"]

    # Two narrow tables rather than one wide one: the UI's metadata column cuts wide tables off.
    scores = ["| system | nDCG@10 | Recall@100 | MAP | MRR | judged@10 | queries |", "|---|---|---|---|---|---|---|"]
    scores += [f"| {name(r)} | {r['ndcg_cut_10']:.4f} | {r['recall_100']:.4f} | {r['map']:.4f} | {r['recip_rank']:.4f} "
               f"| {_judged(r)} | {r['queries']} |" for r in rows]  # fmt: skip
    tests = ["| system | Δ vs base | Δ vs BM25 | Δ vs hybrid-base |", "|---|---|---|---|"]
    tests += [f"| {name(r)} | {_mark(r.get('vs_base'))} | {_mark(r.get('vs_bm25'))} | {_mark(r.get('vs_hybrid_base'))} |" for r in rows]
    note = (
        "Judgments: **human** (the dataset's qrels)."
        if judgments == "human"
        else "Judgments: **SYNTHETIC** — held-out LLM-generated queries with LLM pseudo-judgments; "
        "not comparable to scores on human judgments."
    )
    legend = ("Δ: mean per-query nDCG@10 difference; p: two-sided Fisher randomization test, Holm-corrected over the "
              r"board's comparisons; **\*** significant at 0.05.")  # fmt: skip
    return "\n".join([*scores, "", *tests, "", legend, *(notes or []), note])
