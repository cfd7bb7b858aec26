"""Exact inner-product search over normalised embeddings (FAISS flat index).

Used wherever the pipeline needs the base retriever's exact top-k: the round-trip filter,
the candidates handed to the judge, and dense evaluation runs. Queries are searched in
chunks so memory stays bounded for large query sets.

Example:
    >>> import numpy as np
    >>> from retriever_forge.search import exact_search
    >>> docs = np.eye(3, dtype=np.float32)
    >>> scores, idx = exact_search(docs[[2, 0]], docs, k=1)
    >>> idx.ravel().tolist()
    [2, 0]
"""

from __future__ import annotations

import numpy as np


def exact_search(queries: np.ndarray, corpus: np.ndarray, k: int, chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` corpus rows by inner product for each query row: (scores, indices)."""
    import faiss

    k = min(k, corpus.shape[0])
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    scores = np.empty((queries.shape[0], k), dtype=np.float32)
    idx = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], chunk_size):
        q = np.ascontiguousarray(queries[start : start + chunk_size], dtype=np.float32)
        scores[start : start + len(q)], idx[start : start + len(q)] = index.search(q, k)
    return scores, idx


def hits_to_run(scores: np.ndarray, idx: np.ndarray, query_ids: list[str], doc_ids: list[str]) -> dict[str, dict[str, float]]:
    """A ``{query_id: {doc_id: score}}`` run from FAISS results (rows of -1 ids are padding)."""
    return {
        qid: {doc_ids[int(j)]: float(s) for j, s in zip(idx[i], scores[i], strict=True) if j >= 0}
        for i, qid in enumerate(query_ids)
    }
