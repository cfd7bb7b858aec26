"""Hard-negative mining: retriever-forge vs ``sentence_transformers.util.mine_hard_negatives``.

Same queries (one pseudo-query per passage: its first sentence, like the pipeline's one
synthetic query per passage), same corpus, same model, and the same selection: dense ranks
10..100 (sentence-transformers: ``range_min=9, range_max=100``), a relative margin of 0.95 of
the positive's score (sentence-transformers: ``relative_margin=0.05``, i.e. score <= 0.95 x
positive), 7 negatives per query, exact FAISS inner-product search on both sides.

Two settings, each alternating the sides (A B A B ...) in one process:

* ``cold``: nothing cached; both sides encode the queries and the corpus, then mine.
* ``warm``: embeddings cached on both sides (the pipeline's state: the corpus was already
  encoded by the same base encoder for the round-trip filter and the judge's candidates; for
  sentence-transformers, its own ``cache_folder``). This is the mining work itself.

    .venv/bin/python bench/mining.py --threads 1                       # msmarco-5k, cacm
    .venv/bin/python bench/mining.py --datasets synthetic-2000 --cold-max-docs 500

One JSON line per (dataset, setting), then a Markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Emitter, alternate, machine, markdown, peak_rss_mb, pseudo_queries, ratio_summary, set_threads, workload  # noqa: E402

RANK_START, RANK_END, NEGATIVES, RELATIVE_MARGIN = 10, 100, 7, 0.95


def forge_side(enc, doc_ids, texts, q_ids, q_texts, pos_ids, cache_dir, batch_size):
    from retriever_forge.encoding import encode_cached
    from retriever_forge.mining import MiningConfig, mine_hard_negatives

    cfg = MiningConfig(rank_start=RANK_START, rank_end=RANK_END, negatives_per_query=NEGATIVES, relative_margin=RELATIVE_MARGIN,
                       judge_threshold=None)  # fmt: skip

    def run():
        corpus_emb = encode_cached(enc, texts, cache_dir, batch_size=batch_size)
        query_emb = encode_cached(enc, q_texts, cache_dir, batch_size=batch_size)
        return mine_hard_negatives(query_emb, corpus_emb, q_ids, pos_ids, doc_ids, cfg)

    return run


def st_side(enc, doc_ids, texts, q_texts, pos_ids, cache_dir, batch_size, use_faiss):
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    text_of = dict(zip(doc_ids, texts, strict=True))
    dataset = Dataset.from_dict({"anchor": q_texts, "positive": [text_of[p] for p in pos_ids]})

    def run():
        return mine_hard_negatives(
            dataset, enc.model, corpus=texts, range_min=RANK_START - 1, range_max=RANK_END, relative_margin=1 - RELATIVE_MARGIN,
            num_negatives=NEGATIVES, sampling_strategy="top", batch_size=batch_size, use_faiss=use_faiss,
            cache_folder=str(cache_dir) if cache_dir else None, verbose=False, output_format="n-tuple",
        )  # fmt: skip

    return run


def measure(enc, name, doc_ids, texts, setting, rounds, batch_size, use_faiss, scratch: Path) -> dict:
    q_ids, q_texts, pos_ids = pseudo_queries(doc_ids, texts)
    forge_cache = scratch / "forge" if setting == "warm" else None
    st_cache = scratch / "st" if setting == "warm" else None
    forge = forge_side(enc, doc_ids, texts, q_ids, q_texts, pos_ids, forge_cache, batch_size)
    st = st_side(enc, doc_ids, texts, q_texts, pos_ids, st_cache, batch_size, use_faiss)
    out = {}
    if setting == "warm":  # fill both caches (untimed)
        forge()
        st()
    times = alternate({"forge": lambda: out.__setitem__("forge", forge()), "st": lambda: out.__setitem__("st", st())}, rounds)
    kept = out["forge"].filter(out["forge"]["dropped_by"].is_null())
    return {
        "bench": "mining",
        "dataset": name,
        "setting": setting,
        "passages": len(texts),
        "queries": len(q_texts),
        "window": f"{RANK_START}..{RANK_END}",
        "relative_margin": RELATIVE_MARGIN,
        "negatives_per_query": NEGATIVES,
        "st_use_faiss": use_faiss,
        **ratio_summary(times, "forge", "st"),
        "forge_negatives": kept.height,
        "st_rows": len(out["st"]),
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="msmarco-5k,cacm")
    ap.add_argument("--settings", default="warm,cold", help="comma list: warm, cold")
    ap.add_argument("--cold-max-docs", type=int, default=1000, help="passages for the cold setting (encoding dominates it)")
    ap.add_argument("--max-docs", type=int, default=None, help="passages for the warm setting")
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cold-rounds", type=int, default=2)
    ap.add_argument("--st-faiss", type=int, default=1, help="1: sentence-transformers searches with FAISS; 0: with torch")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache", default=None, help="keep the warm setting's embedding caches here (default: a temporary folder)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from retriever_forge.encoding import load_encoder

    threads = set_threads(args.threads)
    enc = load_encoder(args.model, device="cpu")
    emit = Emitter(args.out)
    scratch = Path(tempfile.mkdtemp(prefix="bench-mining-"))
    try:
        for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            for setting in [s.strip() for s in args.settings.split(",") if s.strip()]:
                cold = setting == "cold"
                doc_ids, texts = workload(name, args.cold_max_docs if cold else args.max_docs)
                caches = Path(args.cache) if args.cache else scratch
                row = measure(enc, name, doc_ids, texts, setting, args.cold_rounds if cold else args.rounds, args.batch_size,
                              bool(args.st_faiss), caches / name)  # fmt: skip
                emit({**row, **machine(threads)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(markdown(emit.rows, ["dataset", "setting", "passages", "queries", "forge_median_s", "st_median_s", "speedup_median",
                               "speedup_min", "speedup_max", "rounds", "peak_rss_mb"]))  # fmt: skip
    return emit.rows


if __name__ == "__main__":
    main()
