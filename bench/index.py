"""Index build and search: FAISS flat (exact) vs IVF, HNSW and IVF-PQ, as the project builds them.

For each corpus, the passages are embedded once with the base encoder (cached under
``bench/results/cache``), then each index type is built with
:func:`retriever_forge.indexing.build_index` (default :class:`IndexParams`) and searched with
one pseudo-query per passage (up to ``--queries``), k=100. Recall@100 is the share of the
exact top-100 that the index returns. The types take turns within each round (flat, ivf,
hnsw, ivfpq, then reversed), and medians over rounds are quoted; ``qps_vs_flat`` is the median
per-round ratio of queries/s to the flat index's.

``ivfpq-sharded`` is the on-disk variant for corpora that do not fit in memory
(:func:`build_sharded_index`: train once, build shards, merge inverted lists on disk).

    .venv/bin/python bench/index.py                                    # msmarco-5k, cacm
    .venv/bin/python bench/index.py --datasets synthetic-30k --queries 2000

One JSON line per (corpus, index type), then a Markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, Emitter, machine, markdown, pseudo_queries, set_threads, workload  # noqa: E402


def embed(enc, texts: list[str], cache: Path, batch_size: int = 64):
    from retriever_forge.encoding import encode_cached

    return encode_cached(enc, texts, cache, batch_size=batch_size)


def recall_at_k(approx, exact) -> float:
    hits = [len(set(a[a >= 0].tolist()) & set(e.tolist())) / len(e) for a, e in zip(approx, exact, strict=True)]
    return float(sum(hits) / len(hits))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="msmarco-5k,cacm")
    ap.add_argument("--types", default="flat,ivf,hnsw,ivfpq,ivfpq-sharded")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache", default=str(RESULTS / "cache" / "embeddings"), help="embedding cache (encode_cached)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import faiss
    import numpy as np

    from retriever_forge.encoding import load_encoder
    from retriever_forge.indexing import IndexParams, build_index, build_sharded_index, load_corpus_index
    from retriever_forge.search import search_index

    threads = set_threads(args.threads)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    enc = load_encoder(args.model, device="cpu")
    emit = Emitter(args.out)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    scratch = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            doc_ids, texts = workload(name)
            corpus = embed(enc, texts, Path(args.cache))
            _, q_texts, _ = pseudo_queries(doc_ids, texts, n=min(args.queries, len(texts)))
            queries = np.ascontiguousarray(embed(enc, q_texts, Path(args.cache)), dtype=np.float32)
            k = min(args.k, len(texts))
            build_s: dict[str, list[float]] = {t: [] for t in types}
            search_s: dict[str, list[float]] = {t: [] for t in types}
            results, sizes = {}, {}
            for r in range(args.rounds):
                for t in types if r % 2 == 0 else types[::-1]:
                    t0 = time.perf_counter()
                    if t == "ivfpq-sharded":
                        folder = scratch / f"{name}-{t}-{r}"
                        build_sharded_index(corpus, doc_ids, folder, shards=args.shards, index_type="ivfpq", params=IndexParams())
                        index = load_corpus_index(folder).index
                        sizes[t] = sum(p.stat().st_size for p in folder.iterdir())
                    else:
                        index, _ = build_index(corpus, t, params=IndexParams())
                        sizes[t] = int(faiss.serialize_index(index).size)
                    build_s[t].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    _, ids = search_index(index, queries, k, chunk_size=len(queries))
                    search_s[t].append(time.perf_counter() - t0)
                    results[t] = ids
                    del index
                    if t == "ivfpq-sharded":
                        shutil.rmtree(folder, ignore_errors=True)
            exact = results.get("flat")
            for t in types:
                row = {
                    "bench": "index",
                    "dataset": name,
                    "index_type": t,
                    "vectors": len(texts),
                    "queries": len(queries),
                    "k": k,
                    "build_s": round(statistics.median(build_s[t]), 4),
                    "queries_per_s": round(len(queries) / statistics.median(search_s[t]), 1),
                    "recall_at_k_vs_exact": round(recall_at_k(results[t], exact), 4) if exact is not None else None,
                    "index_mb": round(sizes[t] / 2**20, 2),
                    "rounds": args.rounds,
                }
                if "flat" in search_s:
                    ratios = [f / s for f, s in zip(search_s["flat"], search_s[t], strict=True)]
                    row["qps_vs_flat"] = round(statistics.median(ratios), 2)
                emit({**row, **machine(threads)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(markdown(emit.rows, ["dataset", "index_type", "vectors", "queries", "build_s", "queries_per_s", "qps_vs_flat",
                               "recall_at_k_vs_exact", "index_mb"]))  # fmt: skip
    return emit.rows


if __name__ == "__main__":
    main()
