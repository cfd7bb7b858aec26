"""Probe for training defaults: cheap pseudo-queries -> mining -> fine-tuning -> real qrels.

No LLM: each sampled passage with an abstract gets a weak-supervision pseudo-query (its title,
or its abstract's first sentence), so mining and training settings can be compared before the
query-generation stage exists. The fine-tuned encoder is scored with pytrec_eval (nDCG@10) on
the dataset's human judgments, and on a second dataset to check it does not forget.

Usage::

    .venv/bin/python bench/train_probe.py --data ../shared/datasets/cacm \\
        --check ../shared/datasets/msmarco-5k --queries 1000 --label base-defaults
    .venv/bin/python bench/train_probe.py --set lr=1e-5 --set epochs=2 --mine rank_start=5

Each run appends one JSON line to ``bench/results/train_probe.jsonl``; corpus embeddings of
the base model are cached in ``bench/results/cache`` (datasets are read in place, never
copied).

Measured on the 2-core CPU (cacm base nDCG@10 0.419 here, msmarco-5k 0.798; seed 0, batch 32,
1 epoch, infonce, T=0.05, mining window 10..100 with relative margin 0.95)::

    queries          negatives  max_len  lr     cacm delta  msmarco delta
    600  title       3          128      2e-5   +0.011      +0.002
    600  title       3          128      5e-5   +0.011      +0.001
    1000 title       3          128      5e-5   -0.045      n/a
    1000 mix         3          128      5e-5   +0.014      +0.002
    1000 mix         3          128      2e-5   +0.020      -0.001
    1000 mix + TAS   3          128      2e-5   +0.021      -0.001

(7 negatives at 256 tokens, one graph per batch, was killed for memory at ~16 GB.)

Title-only pseudo-queries (the title is verbatim in the passage) are a poor, risky signal;
first-sentence/title mixes are closer to LLM queries. 52 judged queries make +-0.01 noise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retriever_forge.datasets import passage_text_expr  # noqa: E402
from retriever_forge.encoding import encode, load_encoder  # noqa: E402
from retriever_forge.mining import MiningConfig, build_training_examples, mine_hard_negatives, mining_summary  # noqa: E402
from retriever_forge.training import TrainingConfig, train_encoder  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def load_beir(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    corpus = pl.read_ndjson(folder / "corpus.jsonl", schema_overrides={"_id": pl.String}).select(
        doc_id=pl.col("_id").cast(pl.String), title=pl.col("title").fill_null(""), text=pl.col("text").fill_null("")
    )
    queries = pl.read_ndjson(folder / "queries.jsonl").select(query_id=pl.col("_id").cast(pl.String), text=pl.col("text"))
    qrels_df = pl.read_csv(folder / "qrels" / "test.tsv", separator="\t", schema_overrides={"query-id": pl.String, "corpus-id": pl.String})
    qrels: dict[str, dict[str, int]] = {}
    for q, d, s in qrels_df.iter_rows():
        qrels.setdefault(str(q), {})[str(d)] = int(s)
    queries = queries.filter(pl.col("query_id").is_in(list(qrels)))
    return corpus, queries, qrels


def ndcg_at_10(model_enc, corpus: pl.DataFrame, queries: pl.DataFrame, qrels: dict, corpus_emb: np.ndarray | None = None) -> float:
    import pytrec_eval

    if corpus_emb is None:
        corpus_emb = encode(model_enc, corpus.select(passage_text_expr().alias("p"))["p"].to_list(), batch_size=64)
    q_emb = encode(model_enc, queries["text"].to_list(), batch_size=64)
    scores = q_emb @ corpus_emb.T
    top = np.argsort(-scores, axis=1)[:, :100]
    doc_ids = corpus["doc_id"].to_list()
    run = {qid: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(queries["query_id"].to_list())}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10"}).evaluate(run)
    return float(np.mean([m["ndcg_cut_10"] for m in per_query.values()]))


def cached_corpus_emb(enc, corpus: pl.DataFrame, name: str) -> np.ndarray:
    path = RESULTS / "cache" / f"{name}-{enc.weights_hash[:12]}.npy"
    if path.exists():
        return np.load(path)
    emb = encode(enc, corpus.select(passage_text_expr().alias("p"))["p"].to_list(), batch_size=64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, emb)
    return emb


_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def pseudo_queries(corpus: pl.DataFrame, n: int, source: str, seed: int, dev: int) -> pl.DataFrame:
    """Weak-supervision queries: a passage's title, or the first sentence of its abstract."""
    with_text = corpus.filter((pl.col("text").str.strip_chars() != "") & (pl.col("title").str.strip_chars() != ""))
    sample = with_text.sample(n=min(n, with_text.height), seed=seed, shuffle=True)
    rows = []
    for i, (doc_id, title, text) in enumerate(sample.select("doc_id", "title", "text").iter_rows()):
        kind = source if source != "mix" else ("title" if i % 2 == 0 else "sentence")
        query = title if kind == "title" else _SENTENCE.split(text.strip())[0]
        rows.append({"query_id": f"pq{i}", "doc_id": doc_id, "text": query[:300], "split": "dev" if i < dev else "train"})
    return pl.DataFrame(rows)


def parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = json.loads(value) if value not in ("None", "null") else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "cacm"))
    ap.add_argument("--check", default=str(ROOT.parent / "shared" / "datasets" / "msmarco-5k"), help="'' to skip")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dev", type=int, default=100)
    ap.add_argument("--query-source", default="mix", choices=["title", "sentence", "mix"], help="mix: alternate title / first sentence")
    ap.add_argument("--set", action="append", default=[], help="TrainingConfig field=JSON value")
    ap.add_argument("--mine", action="append", default=[], help="MiningConfig field=JSON value")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=str(RESULTS / "runs"))
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = Path(args.data)
    corpus, queries, qrels = load_beir(data)
    base = load_encoder("all-MiniLM-L6-v2", device="cpu", max_seq_length=256)
    corpus_emb = cached_corpus_emb(base, corpus, data.name)
    base_ndcg = ndcg_at_10(base, corpus, queries, qrels, corpus_emb)

    pq = pseudo_queries(corpus, args.queries, args.query_source, seed=0, dev=args.dev)
    q_emb = encode(base, pq["text"].to_list(), batch_size=128)
    mcfg = MiningConfig(**parse_sets(args.mine))
    candidates = mine_hard_negatives(q_emb, corpus_emb, pq["query_id"].to_list(), pq["doc_id"].to_list(), corpus["doc_id"].to_list(), mcfg)
    examples = build_training_examples(pq, corpus, candidates)
    t_mined = time.perf_counter()

    tcfg = TrainingConfig(**{"seed": 0, **parse_sets(args.set)})
    run_dir = Path(args.out) / (args.label or "probe")

    def progress(event: dict) -> None:
        if event["step"] % 10 == 0 or "dev" in event:
            print(
                json.dumps(
                    {k: event[k] for k in ("step", "total_steps", "loss") if k in event} | {"dev": event.get("dev", {}).get("mrr@10")}
                ),
                file=sys.stderr,
                flush=True,
            )

    result = train_encoder("all-MiniLM-L6-v2", examples, run_dir, tcfg, progress=progress, resume=False)
    t_trained = time.perf_counter()

    tuned = load_encoder(str(result.model_dir), device="cpu", max_seq_length=256)
    tuned_ndcg = ndcg_at_10(tuned, corpus, queries, qrels)
    record = {
        "label": args.label,
        "data": data.name,
        "query_source": args.query_source,
        "queries": pq.height,
        "training": {k: v for k, v in tcfg.__dict__.items()},
        "mining": {k: v for k, v in mcfg.__dict__.items()},
        "mining_summary": mining_summary(candidates),
        "base_ndcg@10": round(base_ndcg, 4),
        "tuned_ndcg@10": round(tuned_ndcg, 4),
        "delta": round(tuned_ndcg - base_ndcg, 4),
        "best_step": result.best_step,
        "steps": len(result.history),
        "dev": [{"step": m["step"], "mrr@10": m["mrr@10"]} for m in result.dev_metrics],
        "train_seconds": round(t_trained - t_mined, 1),
        "mine_seconds": round(t_mined - t0, 1),
    }
    if args.check:
        c_corpus, c_queries, c_qrels = load_beir(Path(args.check))
        c_base = ndcg_at_10(base, c_corpus, c_queries, c_qrels, cached_corpus_emb(base, c_corpus, Path(args.check).name))
        c_tuned = ndcg_at_10(tuned, c_corpus, c_queries, c_qrels)
        record.update(
            {
                "check": Path(args.check).name,
                "check_base": round(c_base, 4),
                "check_tuned": round(c_tuned, 4),
                "check_delta": round(c_tuned - c_base, 4),
            }
        )
    record["seconds"] = round(time.perf_counter() - t0, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "train_probe.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
