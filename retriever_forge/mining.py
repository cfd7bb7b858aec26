"""Candidate retrieval and hard-negative mining with switchable false-negative filters.

Every candidate a query was offered is kept as a row of ``HARD_NEGATIVE_CANDIDATES`` with the
reason it was dropped (``dropped_by``), so a training example can be traced back to the rank,
score and filter decisions that produced it.

Filters, applied in this order (the first that fires names the row):

* ``positive`` - the query's own positive passage;
* ``window`` - a dense candidate ranked above ``rank_start`` (too likely to be relevant);
* ``margin`` - NV-Retriever's positive-aware filters (Moreira et al. 2024): TopK-PercPos drops a
  candidate scoring above ``relative_margin * positive_score``, TopK-MarginPos one scoring above
  ``positive_score - absolute_margin``;
* ``judge`` - an LLM judge's expected grade at or above ``judge_threshold`` or, positive-aware
  like TopK-PercPos but on the judge's scale, at or above ``judge_margin`` times the grade the
  judge gave the query's own positive (a weak judge's absolute grades sit in a narrow band;
  its comparison of candidate and positive is still informative);
* ``guide`` - GISTEmbed (Solatorio 2024): a guide encoder finds the candidate more similar to the
  query than the positive is;
* ``surplus`` - kept, but beyond ``negatives_per_query``.

Example:
    >>> import numpy as np
    >>> corpus = np.eye(4, dtype=np.float32)
    >>> queries = np.array([[0.9, 0.5, 0.3, 0.1]], dtype=np.float32)
    >>> cfg = MiningConfig(rank_start=1, rank_end=4, negatives_per_query=1, relative_margin=None,
    ...                    judge_threshold=None)
    >>> df = mine_hard_negatives(queries, corpus, ["q1"], ["d0"], ["d0", "d1", "d2", "d3"], cfg)
    >>> df.select("doc_id", "rank", "dropped_by").rows()
    [('d0', 1, 'positive'), ('d1', 2, None), ('d2', 3, 'surplus'), ('d3', 4, 'surplus')]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from retriever_forge.datasets import passage_text_expr
from retriever_forge.indexing import INDEX_TYPES, IndexConfig, IndexParams, build_search_index
from retriever_forge.lexical import BM25Index
from retriever_forge.schemas import HARD_NEGATIVE_CANDIDATES, TRAINING_EXAMPLES, conform
from retriever_forge.search import search_index

log = logging.getLogger(__name__)

IndexType = Literal["auto", "flat", "hnsw", "ivf", "ivfpq"]


@dataclass
class MiningConfig:
    """How hard negatives are mined and filtered.

    ``rank_start``/``rank_end`` is the 1-based inclusive window of dense ranks from which
    negatives are taken; each filter is switched off by setting it to ``None`` (or ``False``).

    Args:
        rank_start: First (1-based) rank of the candidate window.
        rank_end: Last rank of the candidate window.
        negatives_per_query: Negatives kept per query.
        relative_margin: NV-Retriever TopK-PercPos: drop score > margin * positive score (null: off).
        absolute_margin: TopK-MarginPos: drop score > positive score - margin (null: off).
        judge_threshold: Drop candidates whose judged expected grade >= threshold (null: off).
        judge_margin: Positive-aware judge filter: drop judged grade >= margin * the positive's judged grade (null: off).
        use_guide: GISTEmbed: drop candidates the guide encoder scores above the positive (needs guide embeddings).
        bm25_candidates: BM25 candidates mixed in per query.
        exact_search_max_docs: Largest corpus searched exactly (``index_type`` auto).
        index_type: auto, or the FAISS index searched for candidates.
        query_chunk_size: Queries searched and filtered at a time (bounds memory).
        seed: Seeds the training of an approximate candidate index.
    """

    rank_start: int = 10
    rank_end: int = 100
    negatives_per_query: int = 7
    relative_margin: float | None = 0.95  # TopK-PercPos
    absolute_margin: float | None = None  # TopK-MarginPos
    judge_threshold: float | None = 2.0
    judge_margin: float | None = None  # drop judged grade >= judge_margin * the positive's judged grade
    use_guide: bool = False
    bm25_candidates: int = 0
    exact_search_max_docs: int = IndexConfig.exact_max_docs
    index_type: IndexType = "auto"
    query_chunk_size: int = 1024  # queries searched and filtered at a time (bounds memory)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.rank_start <= self.rank_end:
            raise ValueError(f"need 1 <= rank_start <= rank_end, got {self.rank_start}..{self.rank_end}")
        if self.negatives_per_query < 0 or self.bm25_candidates < 0:
            raise ValueError("negatives_per_query and bm25_candidates must be >= 0")
        if self.index_type not in ("auto", *INDEX_TYPES):
            raise ValueError(f"unknown index_type {self.index_type!r}")


# --------------------------------------------------------------------------------------------
# Candidate rows.


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _flatten_hits(scores: np.ndarray, ids: np.ndarray, offset: int):
    """(query row, doc row, 1-based rank, score) arrays from faiss results, skipping -1 ids."""
    n, k = ids.shape
    q_pos = np.repeat(np.arange(offset, offset + n), k)
    rank = np.tile(np.arange(1, k + 1), n)
    d_pos = ids.ravel()
    valid = d_pos >= 0
    return q_pos[valid], d_pos[valid], rank[valid], scores.ravel()[valid].astype(np.float64)


def _check_shapes(query_emb, corpus_emb, query_ids, doc_ids) -> None:
    if len(query_emb) != len(query_ids):
        raise ValueError(f"{len(query_emb)} query embeddings but {len(query_ids)} query ids")
    if len(corpus_emb) != len(doc_ids):
        raise ValueError(f"{len(corpus_emb)} corpus embeddings but {len(doc_ids)} doc ids")
    if len(query_emb) and len(corpus_emb) and query_emb.shape[1] != corpus_emb.shape[1]:
        raise ValueError(f"query dim {query_emb.shape[1]} != corpus dim {corpus_emb.shape[1]}")


def _rowwise_dot(a: np.ndarray, a_rows: np.ndarray, b: np.ndarray, b_rows: np.ndarray, block: int = 65536) -> np.ndarray:
    """``sum(a[a_rows] * b[b_rows], axis=1)`` in blocks, so gathered rows never fill memory."""
    out = np.empty(len(a_rows), dtype=np.float64)
    for s in range(0, len(a_rows), block):
        e = s + block
        out[s:e] = np.einsum("ij,ij->i", a[a_rows[s:e]], b[b_rows[s:e]], dtype=np.float32)
    return out


# --------------------------------------------------------------------------------------------
# Hard-negative mining.


def mine_hard_negatives(
    query_emb: np.ndarray,
    corpus_emb: np.ndarray,
    query_ids: Sequence[str],
    positive_ids: Sequence[str],
    doc_ids: Sequence[str],
    config: MiningConfig | None = None,
    judgments: pl.DataFrame | None = None,
    guide: tuple[np.ndarray, np.ndarray] | None = None,
    bm25: BM25Index | tuple[Sequence[str], Sequence[str]] | None = None,
    query_texts: Sequence[str] | None = None,
    index=None,
    sink: str | Path | None = None,
) -> pl.DataFrame | pl.LazyFrame:
    """Mine and filter hard negatives; one ``HARD_NEGATIVE_CANDIDATES`` row per candidate.

    Args:
        query_emb, corpus_emb: L2-normalised float32 embeddings from the mining encoder, rows
            aligned with ``query_ids`` / ``doc_ids``.
        positive_ids: each query's positive (its source passage); must be in ``doc_ids``.
        judgments: optional ``query_id, doc_id, expected_grade`` (an LLM judge's grades).
        guide: optional ``(guide_query_emb, guide_corpus_emb)`` from a second encoder, rows
            aligned like the mining embeddings; required when ``config.use_guide``.
        bm25: for ``config.bm25_candidates`` extra lexical candidates per query: a
            :class:`~retriever_forge.lexical.BM25Index` over the corpus (the benchmark's BM25)
            used with ``query_texts``, or a ``(corpus_texts, query_texts)`` pair (texts aligned
            with ``doc_ids`` / ``query_ids``) from which one is built.
        index: a prebuilt faiss index over ``corpus_emb`` (otherwise
            :func:`~retriever_forge.indexing.build_search_index` builds one).
        sink: a Parquet file path: each query chunk's rows are written there as soon as they
            are filtered (one row group per chunk) and a ``LazyFrame`` scanning the file is
            returned, so memory holds one chunk of candidates, not all of them (100 rows per
            query: 10M rows for a 100k-query corpus).

    Rows are grouped by query (in input order) and, within a query, in selection order: dense
    candidates by rank, interleaved position by position with the BM25 candidates when there
    are any. The kept rows (``dropped_by`` null) in that order are the negatives.
    """
    cfg = config or MiningConfig()
    _check_shapes(query_emb, corpus_emb, query_ids, doc_ids)
    if isinstance(bm25, tuple | list):
        corpus_texts, query_texts = bm25
        if len(corpus_texts) != len(doc_ids) or len(query_texts) != len(query_ids):
            raise ValueError("bm25 (corpus_texts, query_texts) must be aligned with doc_ids and query_ids")
        bm25 = BM25Index(doc_ids, corpus_texts) if cfg.bm25_candidates else None
    if len(positive_ids) != len(query_ids):
        raise ValueError(f"{len(positive_ids)} positive ids for {len(query_ids)} queries")
    if cfg.use_guide and guide is None:
        raise ValueError("MiningConfig.use_guide is set but no guide embeddings were given")
    if cfg.bm25_candidates and (bm25 is None or query_texts is None):
        raise ValueError("MiningConfig.bm25_candidates > 0 needs a bm25 searcher and query_texts")
    if guide is not None and cfg.use_guide:
        g_q, g_c = _as_f32(guide[0]), _as_f32(guide[1])
        if len(g_q) != len(query_ids) or len(g_c) != len(doc_ids):
            raise ValueError("guide embeddings must be aligned with query_ids and doc_ids")
    query_emb, corpus_emb = _as_f32(query_emb), _as_f32(corpus_emb)

    row_of_doc = {d: i for i, d in enumerate(doc_ids)}
    missing = [p for p in positive_ids if p not in row_of_doc]
    if missing:
        raise ValueError(f"{len(missing)} positive ids are not in doc_ids, e.g. {missing[:3]}")
    pos_rows = np.fromiter((row_of_doc[p] for p in positive_ids), dtype=np.int64, count=len(positive_ids))
    q_all = np.arange(len(query_ids))
    positive_score = _rowwise_dot(query_emb, q_all, corpus_emb, pos_rows)
    guide_positive = _rowwise_dot(g_q, q_all, g_c, pos_rows) if cfg.use_guide else None

    if index is None and len(doc_ids):
        index = build_search_index(
            corpus_emb, cfg.index_type, params=IndexParams(seed=cfg.seed), exact_max_docs=cfg.exact_search_max_docs,
            calibration_queries=query_emb,
        )  # fmt: skip
    grades = _judgment_grades(judgments)
    qids = pl.Series("query_id", list(query_ids), dtype=pl.String)
    dids = pl.Series("doc_id", list(doc_ids), dtype=pl.String)

    frames = []
    writer = _ParquetSink(sink) if sink is not None else None
    for start in range(0, len(qids), cfg.query_chunk_size):
        stop = min(start + cfg.query_chunk_size, len(qids))
        scores, ids = search_index(index, query_emb[start:stop], cfg.rank_end, chunk_size=cfg.query_chunk_size)
        q_pos, d_pos, rank, score = _flatten_hits(scores, ids, start)
        source = np.zeros(len(q_pos), dtype=np.int8)  # 0 dense, 1 bm25
        if cfg.bm25_candidates:
            bq, bd, brank = _bm25_hits(bm25, list(query_texts[start:stop]), cfg.bm25_candidates, start, row_of_doc)
            fresh = ~np.isin(bq * len(dids) + bd, q_pos * len(dids) + d_pos)  # dense row wins
            bq, bd, brank = bq[fresh], bd[fresh], brank[fresh]
            q_pos = np.concatenate([q_pos, bq])
            d_pos = np.concatenate([d_pos, bd])
            rank = np.concatenate([rank, brank])
            score = np.concatenate([score, _rowwise_dot(query_emb, bq, corpus_emb, bd)])
            source = np.concatenate([source, np.ones(len(bq), dtype=np.int8)])
        guide_score = _rowwise_dot(g_q, q_pos, g_c, d_pos) if cfg.use_guide else None
        chunk = _filter_chunk(
            cfg, qids, dids, q_pos, d_pos, rank, score, source, pos_rows, positive_score, guide_score, guide_positive, grades
        )
        if writer is not None:
            writer.write(chunk)
        else:
            frames.append(chunk)
    if writer is not None:
        writer.close()
        return pl.scan_parquet(sink)
    if not frames:
        return pl.DataFrame(schema=HARD_NEGATIVE_CANDIDATES)
    return pl.concat(frames)


class _ParquetSink:
    """Appends polars frames to one Parquet file as row groups (written atomically on close)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self._writer = None

    def write(self, df: pl.DataFrame) -> None:
        import pyarrow.parquet as pq

        table = df.to_arrow()
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.tmp, table.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is None:
            pl.DataFrame(schema=HARD_NEGATIVE_CANDIDATES).write_parquet(self.tmp)
        else:
            self._writer.close()
        self.tmp.replace(self.path)


def _bm25_hits(bm25: BM25Index, texts: list[str], k: int, offset: int, row_of_doc: dict[str, int]):
    q, d, r = [], [], []
    for i, hits in enumerate(bm25.search(texts, k)):
        for rank, doc in enumerate(hits, start=1):
            if doc in row_of_doc:
                q.append(offset + i)
                d.append(row_of_doc[doc])
                r.append(rank)
    return np.asarray(q, dtype=np.int64), np.asarray(d, dtype=np.int64), np.asarray(r, dtype=np.int64)


def _judgment_grades(judgments: pl.DataFrame | None) -> pl.DataFrame | None:
    if judgments is None or judgments.height == 0:
        return None
    return judgments.group_by("query_id", "doc_id").agg(judged_grade=pl.col("expected_grade").cast(pl.Float64).mean())


_REASONS = [None, "positive", "window", "margin", "judge", "guide", "surplus"]


def _filter_chunk(cfg, qids, dids, q_pos, d_pos, rank, score, source, pos_rows, positive_score, guide_score, guide_positive, grades):
    """Apply the filters to one chunk of candidate rows and return them as schema rows.

    Vectorised: reasons, selection order and the per-query count of kept rows are computed
    with numpy; string columns are gathered from one polars Series of ids (no per-row Python
    strings).
    """
    if len(q_pos) == 0:
        return pl.DataFrame(schema=HARD_NEGATIVE_CANDIDATES)
    pos_score = positive_score[q_pos]
    reason = np.zeros(len(q_pos), dtype=np.int8)  # index into _REASONS; first filter that fires wins

    def mark(mask: np.ndarray, code: int) -> None:
        reason[(reason == 0) & mask] = code

    mark(d_pos == pos_rows[q_pos], 1)
    mark((source == 0) & (rank < cfg.rank_start), 2)
    margin = np.zeros(len(q_pos), dtype=bool)
    if cfg.relative_margin is not None:
        margin |= score > cfg.relative_margin * pos_score
    if cfg.absolute_margin is not None:
        margin |= score > pos_score - cfg.absolute_margin
    mark(margin, 3)
    judged = np.full(len(q_pos), np.nan)
    if grades is not None:
        keys = pl.DataFrame({"query_id": _gather(qids, q_pos), "doc_id": _gather(dids, d_pos)})
        judged = keys.join(grades, on=["query_id", "doc_id"], how="left", maintain_order="left")["judged_grade"].to_numpy()
        judged = np.asarray(judged, dtype=np.float64)
        known = np.nan_to_num(judged, nan=-np.inf)
        if cfg.judge_threshold is not None:
            mark(known >= cfg.judge_threshold, 4)
        if cfg.judge_margin is not None:
            pos_keys = pl.DataFrame({"query_id": keys["query_id"], "doc_id": _gather(dids, pos_rows[q_pos])})
            judged_pos = pos_keys.join(grades, on=["query_id", "doc_id"], how="left", maintain_order="left")["judged_grade"]
            # Only where both were judged: an unjudged positive gives no anchor.
            mark(known >= cfg.judge_margin * np.nan_to_num(judged_pos.to_numpy().astype(np.float64), nan=np.inf), 4)
    if guide_score is not None:
        mark(guide_score > guide_positive[q_pos], 5)

    # Selection order: per query, the i-th dense and the i-th BM25 candidate side by side.
    by_rank = np.lexsort((rank, source, q_pos))
    group = np.r_[True, (np.diff(q_pos[by_rank]) != 0) | (np.diff(source[by_rank]) != 0)]
    start = np.maximum.accumulate(np.where(group, np.arange(len(by_rank)), 0))
    position = np.empty(len(q_pos), dtype=np.int64)
    position[by_rank] = np.arange(len(by_rank)) - start
    order = np.lexsort((source, position, q_pos))
    q_o, reason = q_pos[order], reason[order]
    kept = (reason == 0).astype(np.int64)
    csum = np.cumsum(kept)
    new_query = np.r_[True, np.diff(q_o) != 0]
    before = np.maximum.accumulate(np.where(new_query, csum - kept, 0))
    reason[(reason == 0) & (csum - before > cfg.negatives_per_query)] = 6

    reasons = pl.Series("dropped_by", _REASONS, dtype=pl.String)
    return pl.DataFrame(
        {
            "query_id": _gather(qids, q_o),
            "positive_id": _gather(dids, pos_rows[q_o]),
            "doc_id": _gather(dids, d_pos[order]),
            "rank": pl.Series(rank[order], dtype=pl.Int64),
            "score": pl.Series(score[order], dtype=pl.Float64),
            "positive_score": pl.Series(pos_score[order], dtype=pl.Float64),
            "judged_grade": pl.Series(judged[order], dtype=pl.Float64, nan_to_null=True),
            "dropped_by": reasons.gather(reason.astype(np.int64)),
            "source": pl.Series("source", ["dense", "bm25"], dtype=pl.String).gather(source[order].astype(np.int64)),
        }
    )


def _gather(ids: pl.Series, rows: np.ndarray) -> pl.Series:
    return ids.gather(rows.astype(np.int64, copy=False))


def mining_summary(candidates: pl.DataFrame) -> dict:
    """Counts per ``dropped_by`` reason plus kept negatives per query, for asset metadata.

    >>> mining_summary(pl.DataFrame({"query_id": ["q", "q"], "dropped_by": [None, "margin"]}))
    {'rows': 2, 'queries': 1, 'kept': 1, 'kept_per_query': 1.0, 'dropped_by': {'margin': 1}}
    """
    kept = candidates.filter(pl.col("dropped_by").is_null()).height
    n_queries = candidates["query_id"].n_unique() if candidates.height else 0
    reasons = candidates.filter(pl.col("dropped_by").is_not_null())["dropped_by"].value_counts(sort=True)
    return {
        "rows": candidates.height,
        "queries": n_queries,
        "kept": kept,
        "kept_per_query": round(kept / n_queries, 3) if n_queries else 0.0,
        "dropped_by": dict(reasons.rows()),
    }


# --------------------------------------------------------------------------------------------
# Training examples.


def build_training_examples(
    queries: pl.DataFrame,
    corpus: pl.DataFrame,
    candidates: pl.DataFrame,
    judgments: pl.DataFrame | None = None,
    positive_grade: float | None = 3.0,
) -> pl.DataFrame:
    """Join queries, passages, kept negatives and grades into ``TRAINING_EXAMPLES`` rows.

    Args:
        queries: ``query_id, doc_id`` (the positive), ``text``, ``split``; rows with empty
            text are skipped.
        corpus: ``doc_id, title, text``.
        candidates: :func:`mine_hard_negatives` output; its kept rows, in row order, become
            the negatives.
        judgments: ``query_id, doc_id, expected_grade``; grades negatives (0.0 when not
            judged). Without it the candidates' ``judged_grade`` is used.
        positive_grade: the grade of each query's own source passage. The query was written
            for it, so by construction it is the top level (3.0), as "Beyond Contrastive
            Learning" labels each passage by the level it was generated for; the judge grades
            the *candidates*. ``None``: the judge's grade of the positive (3.0 where unjudged) —
            a small judge's grades sit in a narrow band (SmolLM2-135M: positives 0.71 and
            candidates 0.67 on average on cacm), which makes the list-wise target nearly flat.

    >>> q = pl.DataFrame({"query_id": ["q"], "doc_id": ["a"], "text": ["sort"], "split": ["train"]})
    >>> c = pl.DataFrame({"doc_id": ["a", "b"], "title": ["Sorting", ""], "text": ["fast", "slow"]})
    >>> cand = pl.DataFrame({"query_id": ["q"], "doc_id": ["b"], "rank": [2], "score": [0.5],
    ...                      "judged_grade": [None], "dropped_by": [None]})
    >>> row = build_training_examples(q, c, cand).row(0, named=True)
    >>> row["positive_text"], row["negative_texts"], row["negative_grades"], row["positive_grade"]
    ('Sorting: fast', ['slow'], [0.0], 3.0)
    """
    texts = corpus.select(pl.col("doc_id").cast(pl.String), passage=passage_text_expr())
    grades = _judgment_grades(judgments)

    kept = candidates.filter(pl.col("dropped_by").is_null()).with_row_index("_order")
    kept = kept.select("_order", "query_id", "doc_id", "rank", "score", "judged_grade")
    if grades is not None:
        kept = kept.drop("judged_grade").join(grades, on=["query_id", "doc_id"], how="left")
    kept = kept.join(texts, on="doc_id", how="inner").sort("_order")
    negatives = kept.group_by("query_id", maintain_order=True).agg(
        negative_ids=pl.col("doc_id"),
        negative_texts=pl.col("passage"),
        negative_grades=pl.col("judged_grade").fill_null(0.0).cast(pl.Float64),
        negative_ranks=pl.col("rank").cast(pl.Int64),
        negative_scores=pl.col("score").cast(pl.Float64),
    )

    q = queries.select(
        pl.col("query_id").cast(pl.String),
        query=pl.col("text").cast(pl.String),
        positive_id=pl.col("doc_id").cast(pl.String),
        split=pl.col("split").cast(pl.String) if "split" in queries.columns else pl.lit("train"),
    ).filter(pl.col("query").is_not_null() & (pl.col("query").str.strip_chars() != ""))
    n_before = q.height
    q = q.join(texts.rename({"doc_id": "positive_id", "passage": "positive_text"}), on="positive_id", how="inner")
    if q.height < n_before:
        log.warning("skipped %d queries whose positive is not in the corpus", n_before - q.height)
    if grades is not None and positive_grade is None:
        pos = grades.rename({"doc_id": "positive_id", "judged_grade": "positive_grade"})
        q = q.join(pos, on=["query_id", "positive_id"], how="left")
    else:
        q = q.with_columns(positive_grade=pl.lit(positive_grade, dtype=pl.Float64))
    q = q.with_columns(pl.col("positive_grade").fill_null(3.0))
    out = q.join(negatives, on="query_id", how="left").with_columns(
        [pl.col(c).fill_null(pl.lit([], dtype=TRAINING_EXAMPLES[c])) for c in negatives.columns if c != "query_id"]
    )
    return conform(out, TRAINING_EXAMPLES)
