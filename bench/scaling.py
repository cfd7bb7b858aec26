"""How each stage's time and peak memory grow with the corpus: 1k, 10k, 100k passages.

The corpus is synthetic and deterministic (``_common.synthetic_corpus``: stdlib docstring
words recombined by seeded topics, 15-90 words a passage), with one pseudo-query per passage
(its first 12 words), like the pipeline's one synthetic query per passage.

Stages, each in a fresh subprocess so its peak RSS is its own (``ru_maxrss``):

* ``encode``: :func:`encode_cached` of the corpus, cold (the embeddings file is written
  through a memory map, batch by batch);
* ``mine``: encode the queries, then :func:`mine_hard_negatives` (window 10..100, margin 0.95,
  7 negatives) over the memory-mapped corpus embeddings, streaming candidates to Parquet;
* ``index``: build flat, IVF and HNSW indexes (:func:`build_index`) and search the queries.

Encoding is the slow stage on a CPU (~25-60 passages/s on this 2-core machine), so sizes above
``--encode-max`` reuse the largest encoded corpus's vectors: row ``i`` is encoded row
``i mod encode_max`` plus small Gaussian noise, renormalised. Mining and index time and memory
depend on the number and dimension of vectors, not on their text; such rows say
``"embeddings": "derived"``.

    .venv/bin/python bench/scaling.py --threads 1 --sizes 1000,3000,10000,100000 --encode-max 3000

One JSON line per (size, stage), then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, Emitter, machine, markdown, peak_rss_mb, pseudo_queries, set_threads, synthetic_corpus  # noqa: E402


def _rss_now_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


def _derive(base, n: int, path: Path):
    """``n`` rows: row ``i`` is ``base[i mod len(base)]`` plus small noise, renormalised (memmap)."""
    import numpy as np

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, base.shape[1]))
        rng = np.random.default_rng(0)
        for s in range(0, n, 16384):
            rows = np.arange(s, min(s + 16384, n))
            x = base[rows % len(base)] + rng.standard_normal((len(rows), base.shape[1]), dtype=np.float32) * 0.02
            out[s : s + len(rows)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        out.flush()
        del out
        tmp.replace(path)
    return np.load(path, mmap_mode="r")


def embeddings_for(enc, n: int, encode_max: int, cache: Path, max_queries: int | None = None, batch_size: int = 64):
    """Doc ids, query ids/positives, corpus and query embeddings (memmaps) of an ``n``-passage
    corpus, and how they were made (``encoded`` or ``derived``, see the module doc)."""
    from retriever_forge.encoding import encode_cached

    doc_ids, texts = synthetic_corpus(n)
    q_ids, q_texts, pos_ids = pseudo_queries(doc_ids, texts, n=max_queries)
    if n <= encode_max:
        corpus = encode_cached(enc, texts, cache / "embeddings", batch_size=batch_size)
        return doc_ids, q_ids, pos_ids, corpus, encode_cached(enc, q_texts, cache / "embeddings", batch_size=batch_size), "encoded"
    base_ids, base_texts = synthetic_corpus(encode_max)
    base = encode_cached(enc, base_texts, cache / "embeddings", batch_size=batch_size)
    corpus = _derive(base, n, cache / "derived" / f"{enc.weights_hash[:12]}-corpus-{encode_max}-{n}.npy")
    # Query i is derived from the encoded query of passage (i mod encode_max), its positive is
    # the derived passage it was made beside: same geometry as the encoded corpus.
    order = [int(q[1:]) for q in q_ids]
    _, bq_texts, _ = pseudo_queries(base_ids, base_texts)
    bq = encode_cached(enc, bq_texts, cache / "embeddings", batch_size=batch_size)
    row_of_base_query = {int(q[1:]): j for j, q in enumerate(pseudo_queries(base_ids, base_texts)[0])}
    import numpy as np

    base_query_rows = np.array([row_of_base_query[i % encode_max] for i in order])
    aligned = bq[base_query_rows]  # query embedding of each query's source passage, in query order
    queries = _derive(aligned, len(order), cache / "derived" / f"{enc.weights_hash[:12]}-queries-{encode_max}-{n}-{len(order)}.npy")
    return doc_ids, q_ids, pos_ids, corpus, queries, "derived"


def worker(stage: str, n: int, args) -> dict:
    """One stage at one size, in this (fresh) process."""
    import numpy as np

    from retriever_forge.encoding import encode_cached, load_encoder

    threads = set_threads(args.threads)
    enc = load_encoder(args.model, device="cpu")
    cache = Path(args.cache)
    row = {"bench": "scaling", "stage": stage, "passages": n, "model": args.model}
    if stage == "encode":
        doc_ids, texts = synthetic_corpus(n)
        rss0 = _rss_now_mb()
        t0 = time.perf_counter()
        emb = encode_cached(enc, texts, Path(args.scratch) / "embeddings", batch_size=args.batch_size)
        row.update(seconds=round(time.perf_counter() - t0, 2), passages_per_s=round(n / (time.perf_counter() - t0), 1),
                   embeddings_mb=round(emb.nbytes / 2**20, 1), rss_before_mb=rss0)  # fmt: skip
        # Leave the file for the next stages (scratch is per run; the cache is shared).
        import shutil

        (cache / "embeddings").mkdir(parents=True, exist_ok=True)
        for f in (Path(args.scratch) / "embeddings").rglob("*.npy"):
            dest = cache / "embeddings" / f.relative_to(Path(args.scratch) / "embeddings")
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dest)
    elif stage == "mine":
        from retriever_forge.mining import MiningConfig, mine_hard_negatives

        doc_ids, q_ids, pos_ids, corpus, queries, how = embeddings_for(enc, n, args.encode_max, cache, batch_size=args.batch_size)
        rss0 = _rss_now_mb()
        cfg = MiningConfig(rank_start=10, rank_end=100, negatives_per_query=7, relative_margin=0.95, judge_threshold=None)
        t0 = time.perf_counter()
        out = mine_hard_negatives(queries, corpus, q_ids, pos_ids, doc_ids, cfg, sink=Path(args.scratch) / f"mined-{n}.parquet")
        seconds = time.perf_counter() - t0
        rows = out.select("dropped_by").collect()
        row.update(seconds=round(seconds, 2), queries=len(q_ids), candidate_rows=rows.height,
                   kept=int(rows["dropped_by"].is_null().sum()), embeddings=how, rss_before_mb=rss0)  # fmt: skip
    elif stage == "index":
        from retriever_forge.indexing import IndexParams, build_index

        _, _, _, corpus, queries, how = embeddings_for(enc, n, args.encode_max, cache, batch_size=args.batch_size)
        queries = np.ascontiguousarray(queries[: min(n, 2000)], dtype=np.float32)
        rss0 = _rss_now_mb()
        k = min(100, n)
        exact = None
        for kind in ("flat", "ivf", "hnsw"):
            t0 = time.perf_counter()
            index, _ = build_index(corpus, kind, params=IndexParams())
            build = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, ids = index.search(queries, k)
            search = time.perf_counter() - t0
            exact = ids if kind == "flat" else exact
            recall = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(ids, exact, strict=True)]))
            row[f"{kind}_build_s"] = round(build, 2)
            row[f"{kind}_queries_per_s"] = round(len(queries) / search, 1)
            row[f"{kind}_recall_at_100"] = round(recall, 4)
            del index
        row.update(seconds=round(sum(v for key, v in row.items() if key.endswith("_build_s")), 2), embeddings=how, rss_before_mb=rss0)
    else:
        raise ValueError(stage)
    row.update(peak_rss_mb=peak_rss_mb(), **machine(threads))
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--stages", default="encode,mine,index")
    ap.add_argument("--encode-max", type=int, default=10_000, help="largest corpus actually encoded (see the module doc)")
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache", default=str(RESULTS / "cache" / "scaling"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.size, args)), flush=True)
        return []

    import tempfile

    emit = Emitter(args.out)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as scratch:
        for n in sizes:
            for stage in stages:
                if stage == "encode" and n > args.encode_max:
                    continue
                cmd = [sys.executable, __file__, "--worker", stage, "--size", str(n), "--model", args.model, "--cache", args.cache,
                       "--scratch", scratch, "--encode-max", str(args.encode_max), "--batch-size", str(args.batch_size)]  # fmt: skip
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{"')]
                if proc.returncode or not lines:
                    raise RuntimeError(f"{stage} at {n} failed:\n{proc.stderr[-3000:]}")
                emit(json.loads(lines[-1]))
    print()
    print(markdown(emit.rows, ["stage", "passages", "embeddings", "seconds", "passages_per_s", "queries", "flat_queries_per_s",
                               "ivf_recall_at_100", "hnsw_recall_at_100", "rss_before_mb", "peak_rss_mb"]))  # fmt: skip
    return emit.rows


if __name__ == "__main__":
    main()
