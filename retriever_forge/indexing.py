"""The corpus index: a FAISS index file plus the doc ids its rows stand for.

Small corpora get an exact ``IndexFlatIP``; above ``exact_max_docs`` (or when asked) an HNSW
or IVF index trades a little recall for speed. The folder holds only FAISS's own file format
and JSON — no pickles.

Example:
    >>> import numpy as np, tempfile
    >>> from pathlib import Path
    >>> from retriever_forge.indexing import build_corpus_index, load_corpus_index, search_corpus_index
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = build_corpus_index(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"], folder)
    >>> index = load_corpus_index(folder)
    >>> list(search_corpus_index(index, np.eye(4, dtype=np.float32)[[1]], ["q"], k=1)["q"])
    ['b']
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retriever_forge.search import hits_to_run

INDEX_FILE = "index.faiss"
IDS_FILE = "doc_ids.json"
META_FILE = "meta.json"


@dataclass
class CorpusIndex:
    index: object  # faiss.Index
    doc_ids: list[str]
    meta: dict


def make_index(dimension: int, n: int, index_type: str = "auto", exact_max_docs: int = 200_000, hnsw_m: int = 32):
    import faiss

    if index_type == "auto":
        index_type = "flat" if n <= exact_max_docs else "hnsw"
    if index_type == "flat":
        return faiss.IndexFlatIP(dimension), "flat"
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dimension, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 200
        index.hnsw.efSearch = 256
        return index, "hnsw"
    if index_type == "ivf":
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))  # FAISS wants >= 39 training points per list
        quantizer = faiss.IndexFlatIP(dimension)
        index = faiss.IndexIVFFlat(quantizer, dimension, nlist, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = max(1, nlist // 8)
        return index, "ivf"
    raise ValueError(f"unknown index_type {index_type!r} (flat, hnsw, ivf, auto)")


def build_corpus_index(
    embeddings: np.ndarray, doc_ids: list[str], folder: Path, index_type: str = "auto", exact_max_docs: int = 200_000
) -> dict:
    """Build and write the index into ``folder``; returns its meta record."""
    import faiss

    if embeddings.shape[0] != len(doc_ids):
        raise ValueError(f"{embeddings.shape[0]} embeddings for {len(doc_ids)} doc ids")
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    index, kind = make_index(emb.shape[1], emb.shape[0], index_type, exact_max_docs)
    if not index.is_trained:
        index.train(emb)
    index.add(emb)
    folder.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(folder / INDEX_FILE))
    (folder / IDS_FILE).write_text(json.dumps(doc_ids))
    meta = {"index_type": kind, "dimension": int(emb.shape[1]), "vectors": int(emb.shape[0]), "metric": "inner_product"}
    if kind == "ivf":
        meta["nprobe"] = int(index.nprobe)
    if kind == "hnsw":
        meta["ef_search"] = int(index.hnsw.efSearch)
    (folder / META_FILE).write_text(json.dumps(meta, sort_keys=True))
    return meta


def load_corpus_index(folder: Path) -> CorpusIndex:
    import faiss

    folder = Path(folder)
    index = faiss.read_index(str(folder / INDEX_FILE))
    meta = json.loads((folder / META_FILE).read_text())
    if meta.get("index_type") == "ivf":
        index.nprobe = meta.get("nprobe", 1)
    if meta.get("index_type") == "hnsw":
        index.hnsw.efSearch = meta.get("ef_search", 256)
    return CorpusIndex(index=index, doc_ids=json.loads((folder / IDS_FILE).read_text()), meta=meta)


def search_corpus_index(index: CorpusIndex, query_embeddings: np.ndarray, query_ids: list[str], k: int = 100) -> dict[str, dict[str, float]]:
    k = min(k, len(index.doc_ids))
    scores, idx = index.index.search(np.ascontiguousarray(query_embeddings, dtype=np.float32), k)
    return hits_to_run(scores, idx, query_ids, index.doc_ids)
