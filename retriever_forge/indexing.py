"""The corpus index: a FAISS index file plus the doc ids its rows stand for.

Small corpora get an exact ``IndexFlatIP``; above ``exact_max_docs`` (or when asked) an HNSW
or IVF index trades a little recall for speed, and IVF-PQ compresses each vector to
``pq_m`` bytes for corpora whose float32 vectors do not fit in memory. The folder holds only
FAISS's own file formats and JSON — no pickles.

Building streams the embeddings: an index is trained on a seeded sample and vectors are added
``chunk_rows`` at a time, so a memory-mapped ``.npy`` of any size is never copied whole.
:func:`build_sharded_index` goes further for corpora beyond one machine's memory: each shard
of rows is added to a copy of one trained IVF index (shards can be built anywhere, e.g. one
Kubernetes job each), and the shards' inverted lists are merged into one on-disk file
(``faiss.contrib.ondisk``) that search memory-maps.

Example:
    >>> import numpy as np, tempfile
    >>> from pathlib import Path
    >>> from retriever_forge.indexing import build_corpus_index, load_corpus_index
    >>> from retriever_forge.search import dense_run
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = build_corpus_index(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"], folder)
    >>> index = load_corpus_index(folder)
    >>> list(dense_run(np.eye(4, dtype=np.float32)[[1]], index.index, ["q"], index.doc_ids, k=1)["q"])
    ['b']
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retriever_forge.search import search_index

INDEX_FILE = "index.faiss"
IDS_FILE = "doc_ids.json"
META_FILE = "meta.json"
FUSION_FILE = "fusion.json"  # the hybrid (BM25 + dense) fusion chosen for this index, so it can be served
IVFDATA_FILE = "index.ivfdata"
INDEX_TYPES = ("flat", "hnsw", "ivf", "ivfpq")


@dataclass
class CorpusIndex:
    """A loaded corpus index; search it with :func:`retriever_forge.search.dense_run` (``index``, ``doc_ids``)."""

    index: object  # faiss.Index
    doc_ids: list[str]
    meta: dict


@dataclass
class IndexParams:
    """Knobs of the approximate indexes; ``None`` means "derived from the corpus size".

    With the default calibration ``bench/index.py`` measured recall@100 against exact search of
    0.993 / 0.991 (IVF) and 0.998 / 0.999 (HNSW) on msmarco-5k / cacm pseudo-queries.
    """

    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 256
    nlist: int | None = None  # IVF lists: 4 * sqrt(n), at least 39 training points each
    nprobe: int | None = None  # lists visited per query: nlist / 4, at least 16
    pq_m: int | None = None  # IVF-PQ bytes per vector: dimension / 8 (must divide it)
    pq_bits: int = 8
    train_rows: int | None = None  # training sample: 256 points per list (FAISS's own maximum)
    # Calibration: after building, nprobe (IVF) / efSearch (HNSW) grows (x1.5 per try) until the
    # index's recall@calibration_k of exact search reaches target_recall (None: keep the values
    # above), on real query embeddings when the caller has them, else on sampled corpus rows.
    # Corpus rows are easier queries than real ones (each sits inside its own cluster: on
    # synthetic-2000, 0.987 for them was 0.916 for pseudo-queries), hence the 0.99 default.
    target_recall: float | None = 0.99
    calibration_k: int = 100
    calibration_queries: int = 256
    seed: int = 0

    def resolved_nlist(self, n: int) -> int:
        return self.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))

    def resolved_nprobe(self, nlist: int) -> int:
        return min(nlist, self.nprobe or max(16, nlist // 4))


@dataclass
class IndexConfig:
    """Which FAISS index a corpus gets: the defaults of every index builder here and of the ``corpus_index`` asset.

    Args:
        index_type: flat | hnsw | ivf | ivfpq | auto (flat up to exact_max_docs vectors, then HNSW).
        exact_max_docs: auto: largest corpus indexed exactly.
    """

    index_type: str = "auto"
    exact_max_docs: int = 200_000


def resolve_index_type(
    n: int, index_type: str = IndexConfig.index_type, exact_max_docs: int = IndexConfig.exact_max_docs, gpu: bool = False
) -> str:
    """``auto``: exact search up to ``exact_max_docs`` vectors, then HNSW, or IVF where the index
    will be searched on a GPU (faiss has no GPU HNSW).

    >>> resolve_index_type(1_000), resolve_index_type(10**6), resolve_index_type(10**6, gpu=True)
    ('flat', 'hnsw', 'ivf')
    """
    if index_type == "auto":
        return "flat" if n <= exact_max_docs else ("ivf" if gpu else "hnsw")
    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index_type {index_type!r} ({', '.join(INDEX_TYPES)}, auto)")
    return index_type


def make_index(
    dimension: int,
    n: int,
    index_type: str = IndexConfig.index_type,
    exact_max_docs: int = IndexConfig.exact_max_docs,
    params: IndexParams | None = None,
):
    """An empty (untrained) inner-product index for ``n`` vectors, and its resolved type."""
    import faiss

    p = params or IndexParams()
    kind = resolve_index_type(n, index_type, exact_max_docs)
    if kind == "flat":
        return faiss.IndexFlatIP(dimension), kind
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dimension, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p.ef_construction
        index.hnsw.efSearch = p.ef_search
        return index, kind
    nlist = p.resolved_nlist(n)
    quantizer = faiss.IndexFlatIP(dimension)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dimension, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        pq_m = p.pq_m or max(1, dimension // 8)
        if dimension % pq_m:
            raise ValueError(f"pq_m={pq_m} must divide the dimension {dimension}")
        index = faiss.IndexIVFPQ(quantizer, dimension, nlist, pq_m, p.pq_bits, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = p.seed
    index.nprobe = p.resolved_nprobe(nlist)
    return index, kind


def _training_sample(embeddings: np.ndarray, rows: int, seed: int) -> np.ndarray:
    n = embeddings.shape[0]
    if n <= rows:
        return np.ascontiguousarray(embeddings, dtype=np.float32)
    pick = np.sort(np.random.default_rng(seed).choice(n, rows, replace=False))  # sorted: sequential reads of a memmap
    return np.ascontiguousarray(embeddings[pick], dtype=np.float32)


def train_index(index, embeddings: np.ndarray, params: IndexParams | None = None) -> None:
    """Train ``index`` (if it needs it) on a seeded sample of ``embeddings``."""
    if index.is_trained:
        return
    p = params or IndexParams()
    nlist = getattr(index, "nlist", 1)
    rows = p.train_rows or max(nlist * 256, 10_000 if hasattr(index, "pq") else 0)
    index.train(_training_sample(embeddings, rows, p.seed))


def add_in_chunks(index, embeddings: np.ndarray, chunk_rows: int = 65_536, start: int = 0, stop: int | None = None) -> None:
    """Add rows ``start:stop`` of ``embeddings`` (array or memmap) ``chunk_rows`` at a time."""
    stop = embeddings.shape[0] if stop is None else stop
    for s in range(start, stop, chunk_rows):
        index.add(np.ascontiguousarray(embeddings[s : min(s + chunk_rows, stop)], dtype=np.float32))


def build_index(embeddings: np.ndarray, index_type: str = IndexConfig.index_type, exact_max_docs: int = IndexConfig.exact_max_docs,
                params: IndexParams | None = None, chunk_rows: int = 65_536, calibration_queries: np.ndarray | None = None):  # fmt: skip
    """A trained, filled (and calibrated) index over ``embeddings`` and its resolved type."""
    p = params or IndexParams()
    index, kind = make_index(embeddings.shape[1], embeddings.shape[0], index_type, exact_max_docs, params=p)
    train_index(index, embeddings, p)
    add_in_chunks(index, embeddings, chunk_rows)
    if kind != "flat" and p.target_recall is not None:
        calibrate(index, embeddings, p, calibration_queries)
    return index, kind


def build_search_index(
    embeddings: np.ndarray,
    index_type: str = "flat",
    *,
    params: IndexParams | None = None,
    exact_max_docs: int = IndexConfig.exact_max_docs,
    calibration_queries: np.ndarray | None = None,
    use_gpu: bool | None = None,
):
    """An index to search in this process (mining's): :func:`build_index`'s, moved onto the GPUs
    when faiss sees one (``auto`` then means IVF, not HNSW: faiss has no GPU HNSW).

    Args:
        embeddings: L2-normalised rows.
        index_type: ``auto`` or one of :data:`INDEX_TYPES`.
        params: the approximate indexes' knobs (seeded training, calibration to
            ``params.target_recall`` of exact search).
        exact_max_docs: ``auto`` searches exactly up to this many rows.
        calibration_queries: real query embeddings to calibrate on (else sampled corpus rows).
        use_gpu: ``None``: when faiss sees a GPU.

    Example:
        >>> from retriever_forge.search import search_index
        >>> idx = build_search_index(np.eye(3, dtype=np.float32), "flat")
        >>> search_index(idx, np.array([[0.0, 1.0, 0.0]], dtype=np.float32), 2)[1].tolist()
        [[1, 0]]
    """
    import faiss

    gpu = faiss.get_num_gpus() > 0 if use_gpu is None else use_gpu
    kind = resolve_index_type(len(embeddings), index_type, exact_max_docs, gpu=gpu)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    index, kind = build_index(embeddings, kind, exact_max_docs, params, calibration_queries=calibration_queries)
    if gpu and kind != "hnsw":  # faiss has no GPU HNSW
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def calibrate(index, embeddings: np.ndarray, params: IndexParams | None = None, queries: np.ndarray | None = None) -> float:
    """Raise ``nprobe`` (IVF) or ``efSearch`` (HNSW) until recall@k of exact search reaches the
    target on ``queries`` (default: a seeded sample of corpus rows); returns the recall reached.

    The knob grows by half each try, so this costs a few searches of a few hundred queries.
    IVF-PQ's recall is also bounded by its quantisation: it stops once probing more lists gains
    less than 0.005 (or at ``nprobe == nlist``).
    """
    import faiss

    p = params or IndexParams()
    n = embeddings.shape[0]
    k = min(p.calibration_k, n)
    if queries is None:
        queries = _training_sample(embeddings, min(p.calibration_queries, n), p.seed + 1)
    else:
        pick = np.random.default_rng(p.seed + 1).permutation(len(queries))[: p.calibration_queries]
        queries = np.ascontiguousarray(np.asarray(queries)[np.sort(pick)], dtype=np.float32)
    exact = faiss.IndexFlatIP(embeddings.shape[1])
    add_in_chunks(exact, embeddings)
    _, truth = search_index(exact, queries, k)
    del exact

    def recall() -> float:
        _, got = search_index(index, queries, k)  # raises an HNSW efSearch below k to k first
        return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(got, truth, strict=True)]))

    hnsw = getattr(index, "hnsw", None)
    if hnsw is not None:
        r = recall()
        while r < p.target_recall and hnsw.efSearch < 4096:
            hnsw.efSearch = math.ceil(hnsw.efSearch * 1.5)
            r = recall()
        return r
    r = recall()
    while r < p.target_recall and index.nprobe < index.nlist:
        before, previous = index.nprobe, r
        index.nprobe = min(index.nlist, math.ceil(index.nprobe * 1.5))
        r = recall()
        if hasattr(index, "pq") and r - previous < 0.005:  # IVF-PQ: quantisation, not probing, bounds recall now
            index.nprobe, r = before, previous
            break
    return r


def _meta(index, kind: str, params: IndexParams, **extra) -> dict:
    meta = {"index_type": kind, "dimension": int(index.d), "vectors": int(index.ntotal), "metric": "inner_product", **extra}
    if kind in ("ivf", "ivfpq"):
        meta["nlist"] = int(index.nlist)
        meta["nprobe"] = int(index.nprobe)
    if kind == "ivfpq":
        meta["pq_m"] = int(index.pq.M)
        meta["pq_bits"] = int(index.pq.nbits)
    if kind == "hnsw":
        meta["ef_search"] = int(index.hnsw.efSearch)
        meta["hnsw_m"] = params.hnsw_m
    return meta


def build_corpus_index(
    embeddings: np.ndarray,
    doc_ids: list[str],
    folder: Path,
    index_type: str = IndexConfig.index_type,
    exact_max_docs: int = IndexConfig.exact_max_docs,
    params: IndexParams | None = None,
) -> dict:
    """Build and write the index into ``folder``; returns its meta record."""
    import faiss

    if embeddings.shape[0] != len(doc_ids):
        raise ValueError(f"{embeddings.shape[0]} embeddings for {len(doc_ids)} doc ids")
    p = params or IndexParams()
    index, kind = build_index(embeddings, index_type, exact_max_docs, p)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(folder / INDEX_FILE))
    (folder / IDS_FILE).write_text(json.dumps(doc_ids))
    meta = _meta(index, kind, p)
    (folder / META_FILE).write_text(json.dumps(meta, sort_keys=True))
    return meta


def shard_ranges(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous, near-equal row ranges covering ``0..n``.

    >>> shard_ranges(10, 3)
    [(0, 4), (4, 7), (7, 10)]
    """
    shards = max(1, min(shards, n)) if n else 1
    bounds = [(i * n + shards - 1) // shards for i in range(shards + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(shards)]


def train_sharded(embeddings: np.ndarray, folder: Path, index_type: str = "ivfpq", params: IndexParams | None = None) -> Path:
    """Step 1 of a sharded build: train an empty IVF / IVF-PQ index and write it (``trained.faiss``)."""
    import faiss

    if index_type not in ("ivf", "ivfpq"):
        raise ValueError("sharded indexes are IVF or IVF-PQ (their inverted lists can be merged on disk)")
    p = params or IndexParams()
    index, _ = make_index(embeddings.shape[1], embeddings.shape[0], index_type, params=p)
    train_index(index, embeddings, p)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "trained.faiss"
    faiss.write_index(index, str(path))
    return path


def build_shard(trained: Path, embeddings: np.ndarray, start: int, stop: int, out: Path, chunk_rows: int = 65_536) -> Path:
    """Step 2 (one per shard, on any machine): add rows ``start:stop`` to a copy of the trained
    index, with their global row numbers as ids, and write it to ``out``."""
    import faiss

    index = faiss.read_index(str(trained))
    for s in range(start, stop, chunk_rows):
        e = min(s + chunk_rows, stop)
        index.add_with_ids(np.ascontiguousarray(embeddings[s:e], dtype=np.float32), np.arange(s, e, dtype=np.int64))
    faiss.write_index(index, str(out))
    return Path(out)


def merge_shards(trained: Path, shard_files: list[Path], doc_ids: list[str], folder: Path, index_type: str = "ivfpq") -> dict:
    """Step 3: merge the shards' inverted lists into one on-disk file beside the index.

    The result loads with :func:`load_corpus_index`; its inverted lists stay on disk
    (memory-mapped), so resident memory is the coarse quantiser plus the pages a search touches.
    """
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    folder = Path(folder)
    index = faiss.read_index(str(trained))
    merge_ondisk(index, [str(s) for s in shard_files], str(folder / IVFDATA_FILE))
    if index.ntotal != len(doc_ids):
        raise ValueError(f"merged {index.ntotal} vectors for {len(doc_ids)} doc ids")
    faiss.write_index(index, str(folder / INDEX_FILE))
    (folder / IDS_FILE).write_text(json.dumps(doc_ids))
    meta = _meta(index, index_type, IndexParams(), shards=len(shard_files), on_disk=True)
    (folder / META_FILE).write_text(json.dumps(meta, sort_keys=True))
    return meta


def build_sharded_index(embeddings: np.ndarray, doc_ids: list[str], folder: Path, shards: int = 4, index_type: str = "ivfpq",
                        params: IndexParams | None = None, chunk_rows: int = 65_536) -> dict:  # fmt: skip
    """Train, build every shard and merge, in one process (the three steps above).

    Across machines, run :func:`train_sharded` once, :func:`build_shard` per shard (each reads
    only its rows of the embeddings file), then :func:`merge_shards`.
    """
    if embeddings.shape[0] != len(doc_ids):
        raise ValueError(f"{embeddings.shape[0]} embeddings for {len(doc_ids)} doc ids")
    folder = Path(folder)
    work = folder / "shards"
    work.mkdir(parents=True, exist_ok=True)
    trained = train_sharded(embeddings, work, index_type, params)
    files = [build_shard(trained, embeddings, s, e, work / f"shard-{i:04d}.faiss", chunk_rows)
             for i, (s, e) in enumerate(shard_ranges(embeddings.shape[0], shards))]  # fmt: skip
    meta = merge_shards(trained, files, doc_ids, folder, index_type)
    for f in [trained, *files]:
        f.unlink()
    work.rmdir()
    return meta


def load_corpus_index(folder: Path) -> CorpusIndex:
    import faiss

    folder = Path(folder)
    meta = json.loads((folder / META_FILE).read_text())
    # On-disk inverted lists are found beside the index file wherever the folder now lives.
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR if meta.get("on_disk") else 0
    index = faiss.read_index(str(folder / INDEX_FILE), flags)
    if meta.get("index_type") in ("ivf", "ivfpq"):
        index.nprobe = meta.get("nprobe", 1)
    if meta.get("index_type") == "hnsw":
        index.hnsw.efSearch = meta.get("ef_search", 256)
    return CorpusIndex(index=index, doc_ids=json.loads((folder / IDS_FILE).read_text()), meta=meta)


def write_fusion(folder: Path, fusion: dict) -> None:
    """Store the fusion choices (``{"hybrid": {...}, "hybrid-base": {...}}``) beside the index."""
    (Path(folder) / FUSION_FILE).write_text(json.dumps(fusion, sort_keys=True, indent=1))


def read_fusion(folder: Path) -> dict:
    """The fusion record stored with an index; ``{}`` for an index built before hybrids existed."""
    path = Path(folder) / FUSION_FILE
    return json.loads(path.read_text()) if path.exists() else {}
