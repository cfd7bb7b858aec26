"""Dense retrieval: the one top-k inner-product search, exact or over a FAISS index.

Every dense search in the pipeline goes through :func:`search_index`: the round-trip filter
and the judge's candidates (:func:`exact_search`), hard-negative mining (arrays, over the
mining index), and the runs the benchmark and serving score (:func:`dense_run`, exact over
embeddings or over the corpus index). Queries are searched in chunks so memory stays bounded
for large query sets. Runs are BEIR's ``{query_id: {doc_id: score}}``; the lexical side is
:mod:`retriever_forge.lexical`.

Example:
    >>> import numpy as np
    >>> from retriever_forge.search import dense_run, exact_search
    >>> docs = np.eye(3, dtype=np.float32)
    >>> scores, idx = exact_search(docs[[2, 0]], docs, k=1)
    >>> idx.ravel().tolist()
    [2, 0]
    >>> dense_run(docs[[1]], docs, ["q"], ["a", "b", "c"], k=2)
    {'q': {'b': 1.0, 'a': 0.0}}
"""

from __future__ import annotations

import numpy as np

Run = dict[str, dict[str, float]]


def exact_index(corpus: np.ndarray):
    """A ``faiss.IndexFlatIP`` holding ``corpus`` (rows: L2-normalised embeddings)."""
    import faiss

    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    return index


def search_index(index, queries: np.ndarray, k: int, chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, row ids) per query from a FAISS inner-product index.

    Args:
        index: any ``faiss.Index`` (flat, HNSW, IVF, IVF-PQ, on CPU or GPU).
        queries: one query embedding per row.
        k: results per query, capped at the index's size; ids are -1 where an approximate
            index finds fewer.
        chunk_size: queries searched per call to FAISS.

    Returns:
        ``(scores, ids)``, float32 and int64 arrays of shape ``(len(queries), min(k, ntotal))``.

    Example:
        >>> idx = exact_index(np.eye(3, dtype=np.float32))
        >>> search_index(idx, np.array([[0.0, 1.0, 0.5]], dtype=np.float32), 5)[1].tolist()  # k capped at 3 rows
        [[1, 2, 0]]
    """
    k = max(0, min(k, index.ntotal))
    n = len(queries)
    scores = np.zeros((n, k), dtype=np.float32)
    ids = np.zeros((n, k), dtype=np.int64)
    if k == 0:
        return scores, ids
    hnsw = getattr(index, "hnsw", None)
    if hnsw is not None and hnsw.efSearch < k:
        hnsw.efSearch = k  # HNSW cannot return more results than its beam holds
    for start in range(0, n, chunk_size):
        q = np.ascontiguousarray(queries[start : start + chunk_size], dtype=np.float32)
        scores[start : start + len(q)], ids[start : start + len(q)] = index.search(q, k)
    return scores, ids


def exact_search(queries: np.ndarray, corpus: np.ndarray, k: int, chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` corpus rows by inner product for each query row: ``(scores, row ids)``."""
    return search_index(exact_index(corpus), queries, k, chunk_size)


def hits_to_run(scores: np.ndarray, idx: np.ndarray, query_ids: list[str], doc_ids: list[str]) -> Run:
    """A ``{query_id: {doc_id: score}}`` run from FAISS results (rows of -1 ids are padding)."""
    return {qid: {doc_ids[int(j)]: float(s) for j, s in zip(idx[i], scores[i], strict=True) if j >= 0} for i, qid in enumerate(query_ids)}


def dense_run(query_embeddings: np.ndarray, corpus, query_ids: list[str], doc_ids: list[str], k: int = 100) -> Run:
    """Each query's top-``k`` passages as a run.

    Args:
        query_embeddings: one row per id in ``query_ids``.
        corpus: the corpus embeddings (searched exactly) or a FAISS index over them, e.g. the
            corpus index's ``CorpusIndex.index``.
        doc_ids: the doc id of each corpus row / index id.
        k: run depth.

    Example:
        >>> index = exact_index(np.eye(2, dtype=np.float32))
        >>> dense_run(np.array([[0.6, 0.8]], np.float32), index, ["q"], ["a", "b"])
        {'q': {'b': 0.800000011920929, 'a': 0.6000000238418579}}
    """
    index = exact_index(corpus) if isinstance(corpus, np.ndarray) else corpus
    scores, idx = search_index(index, query_embeddings, k)
    return hits_to_run(scores, idx, query_ids, doc_ids)
