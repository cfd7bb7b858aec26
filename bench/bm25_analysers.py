"""BM25 analysers: the quality of each on BEIR folders, to choose the one ``retriever_forge.lexical`` uses.

Two analysers, both ``bm25s``' default tokens (lower-cased words of two or more characters)
with English stopwords removed:

* ``stopwords+snowball``: plus English Snowball stemming (PyStemmer) — the benchmark's BM25;
* ``stopwords``: no stemming — what hard-negative mining's BM25 candidates used before the two
  were made one.

Each folder's own queries and qrels (``qrels/<split>.tsv``) are scored with ``pytrec_eval``
(nDCG@10, Recall@100); the folders are read in place, never copied. The package's analyser
(``package: true``) is scored through :func:`retriever_forge.lexical.bm25_run` itself; the
other through this file's copy of it with only the analyser swapped (checked first: with the
package's analyser the copy gives the package's run).

    nice -n 19 .venv/bin/python bench/bm25_analysers.py                       # cacm, msmarco-5k
    nice -n 19 .venv/bin/python bench/bm25_analysers.py ../shared/datasets/cacm

One JSON line per (dataset, analyser), then a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DATASETS, Emitter, markdown  # noqa: E402


def unstemmed(texts: list[str]) -> list[list[str]]:
    """The analyser without stemming."""
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


def bm25_run_with(analyser, corpus, queries, k: int = 100) -> dict[str, dict[str, float]]:
    """A BM25 run like ``lexical.bm25_run``'s, with another analyser."""
    import bm25s

    from retriever_forge.datasets import passage_text

    retriever = bm25s.BM25()
    retriever.index(analyser([passage_text(t, x) for t, x in zip(corpus["title"], corpus["text"], strict=True)]), show_progress=False)
    idx, scores = retriever.retrieve(analyser(queries["text"].to_list()), k=min(k, corpus.height), show_progress=False)
    doc_ids = corpus["doc_id"].to_list()
    return {
        qid: {doc_ids[int(j)]: float(s) for j, s in zip(idx[i], scores[i], strict=True) if s > 0}
        for i, qid in enumerate(queries["query_id"].to_list())
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = [str(DATASETS / "cacm"), str(DATASETS / "msmarco-5k")]
    parser.add_argument("folders", nargs="*", default=default, help="BEIR folders (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    args = parser.parse_args()

    from retriever_forge.datasets import DatasetSpec, load_dataset
    from retriever_forge.evaluation import qrels_dict, score_run
    from retriever_forge.lexical import bm25_run, tokenize

    emit = Emitter(args.out)
    for folder in map(Path, args.folders):
        ds = load_dataset(DatasetSpec(name=folder.name, path=str(folder), split=args.split))
        qrels = qrels_dict(ds.qrels)
        # This file's BM25 with the package's analyser is the package's BM25, so the rows differ by the analyser alone.
        if bm25_run_with(tokenize, ds.corpus, ds.queries) != bm25_run(ds.corpus, ds.queries):
            raise SystemExit(f"{folder}: bm25_run_with(lexical.tokenize) differs from lexical.bm25_run")
        for name, package in (("stopwords+snowball", True), ("stopwords", False)):
            started = time.perf_counter()
            run = bm25_run(ds.corpus, ds.queries) if package else bm25_run_with(unstemmed, ds.corpus, ds.queries)
            seconds = time.perf_counter() - started
            per_query, agg = score_run(run, qrels)
            emit(
                {
                    "bench": "bm25_analysers",
                    "dataset": folder.name,
                    "analyser": name,
                    "package": package,
                    "ndcg_cut_10": agg["ndcg_cut_10"],
                    "recall_100": agg["recall_100"],
                    "queries": per_query.height,
                    "passages": ds.corpus.height,
                    "seconds": round(seconds, 2),
                }
            )
    print()
    print(markdown(emit.rows, ["dataset", "analyser", "package", "ndcg_cut_10", "recall_100", "queries", "passages", "seconds"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
