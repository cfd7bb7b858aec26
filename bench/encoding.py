"""Encoding throughput: retriever-forge's encoder path vs ``SentenceTransformer.encode``.

Same model object, same texts, same batch size, both producing L2-normalised float32 numpy
arrays. The project's path (:func:`retriever_forge.encoding.encode`) batches by exact token
length and writes each batch into one preallocated array; sentence-transformers sorts by
character length and stacks per-text vectors at the end. The two sides alternate (A B A B ...)
in one process; the speed-up quoted is the median of the per-round ratios.

    .venv/bin/python bench/encoding.py                                   # msmarco-5k and cacm
    .venv/bin/python bench/encoding.py --datasets synthetic-10k --rounds 3

One JSON line per (dataset) measurement, then a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Emitter, alternate, machine, markdown, ratio_summary, set_threads, workload  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="msmarco-5k,cacm", help="comma list: BEIR folders in ../shared/datasets or synthetic-N")
    ap.add_argument("--max-docs", type=int, default=None)
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = ap.parse_args(argv)

    import numpy as np

    from retriever_forge.encoding import encode, load_encoder

    threads = set_threads(args.threads)
    enc = load_encoder(args.model, device="cpu", max_seq_length=args.max_seq_length)
    emit = Emitter(args.out)
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        _, texts = workload(name, args.max_docs)
        warm = texts[: args.batch_size]
        encode(enc, warm, batch_size=args.batch_size)
        enc.model.encode(warm, batch_size=args.batch_size, show_progress_bar=False)
        results = {}

        def forge(texts=texts, results=results):
            results["forge"] = encode(enc, texts, batch_size=args.batch_size)

        def st(texts=texts, results=results):
            results["st"] = enc.model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                             show_progress_bar=False)  # fmt: skip

        sides = {"forge": forge, "st": st}
        times = alternate(sides, args.rounds)
        summary = ratio_summary(times, "forge", "st")
        emit(
            {
                "bench": "encoding",
                "dataset": name,
                "passages": len(texts),
                "model": args.model,
                "batch_size": args.batch_size,
                "max_seq_length": args.max_seq_length,
                "forge_passages_per_s": round(len(texts) / summary["forge_median_s"], 1),
                "st_passages_per_s": round(len(texts) / summary["st_median_s"], 1),
                **summary,
                "max_abs_diff": float(np.abs(np.asarray(results["forge"]) - results["st"]).max()),
                **machine(threads),
            }
        )
    print()
    print(markdown(emit.rows, ["dataset", "passages", "batch_size", "forge_passages_per_s", "st_passages_per_s", "speedup_median",
                               "speedup_min", "speedup_max", "rounds", "max_abs_diff"]))  # fmt: skip
    return emit.rows


if __name__ == "__main__":
    main()
