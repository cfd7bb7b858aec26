"""Training throughput: retriever-forge's trainer vs sentence-transformers' trainer (MNRL).

Same base model, same examples (query, positive, 3 negatives), same batch size (32), same
learning rate and warmup, same maximum length (128 tokens), same loss (InfoNCE with in-batch
negatives at temperature 0.05 == ``MultipleNegativesRankingLoss(scale=20)``), no duplicate
positives within a batch on both sides, no evaluation, same precision (``--precision``:
float32, or bfloat16 autocast on both sides — the project's default where bf16 is native,
``bf16=True`` for the sentence-transformers trainer). Each side's timing covers a whole
user-visible run: load the base model, train one pass over the examples, write the model
folder. The sides alternate (A B A B ...) in one process.

Examples: one pseudo-query per passage (its first sentence) with its passage as positive and
three BM25-ranked passages as negatives (throughput does not depend on negative quality).

    .venv/bin/python bench/training.py --threads 1                  # msmarco-5k, cacm
    .venv/bin/python bench/training.py --datasets cacm --steps 4 --rounds 3

One JSON line per dataset, then a Markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Emitter, alternate, machine, markdown, peak_rss_mb, pseudo_queries, ratio_summary, set_threads, workload  # noqa: E402


def build_examples(doc_ids: list[str], texts: list[str], n: int, negatives: int = 3):
    """``n`` training rows (TRAINING_EXAMPLES columns) with BM25 negatives."""
    import polars as pl

    from retriever_forge.lexical import BM25Index

    q_ids, q_texts, pos_ids = pseudo_queries(doc_ids, texts, n=n)
    text_of = dict(zip(doc_ids, texts, strict=True))
    hits = [list(h) for h in BM25Index(doc_ids, texts).search(q_texts, negatives + 8)]
    neg_ids = []
    for pos, row in zip(pos_ids, hits, strict=True):
        row = [d for d in row if d != pos]
        # Too few lexical neighbours: pad with fixed other passages so every row has `negatives`.
        row += [d for d in doc_ids[: negatives + 1] if d != pos and d not in row]
        neg_ids.append(row[:negatives])
    return pl.DataFrame(
        {
            "query_id": q_ids,
            "query": q_texts,
            "positive_id": pos_ids,
            "positive_text": [text_of[p] for p in pos_ids],
            "positive_grade": [3.0] * len(q_ids),
            "negative_ids": neg_ids,
            "negative_texts": [[text_of[d] for d in ns] for ns in neg_ids],
            "negative_grades": [[0.0] * len(ns) for ns in neg_ids],
            "split": ["train"] * len(q_ids),
        }
    )


def forge_side(model_path: str, examples, scratch: Path, args):
    from retriever_forge.training import TrainingConfig, train_encoder

    cfg = TrainingConfig(epochs=1, batch_size=args.batch_size, learning_rate=2e-5, temperature=0.05, loss="infonce",
                         negatives_per_example=args.negatives, max_seq_length=args.max_seq_length, eval_at_start=False, seed=0,
                         device="cpu", bf16=args.precision == "bf16")  # fmt: skip

    def run():
        out = scratch / "forge"
        shutil.rmtree(out, ignore_errors=True)
        return train_encoder(model_path, examples, out, cfg, resume=False)

    return run


def st_side(model_path: str, examples, scratch: Path, args):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments, losses

    try:
        from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.training_args import BatchSamplers

    columns = {"anchor": examples["query"].to_list(), "positive": examples["positive_text"].to_list()}
    negs = examples["negative_texts"].to_list()
    for j in range(args.negatives):
        columns[f"negative_{j + 1}"] = [n[j] for n in negs]
    dataset = Dataset.from_dict(columns)

    def run():
        out = scratch / "st"
        shutil.rmtree(out, ignore_errors=True)
        model = SentenceTransformer(model_path, device="cpu")
        model.max_seq_length = args.max_seq_length
        training_args = SentenceTransformerTrainingArguments(
            output_dir=str(out / "trainer"), num_train_epochs=1, per_device_train_batch_size=args.batch_size, learning_rate=2e-5,
            warmup_ratio=0.1, weight_decay=0.01, max_grad_norm=1.0, seed=0, save_strategy="no", report_to="none",
            logging_steps=1, batch_sampler=BatchSamplers.NO_DUPLICATES, use_cpu=True, disable_tqdm=True, bf16=args.precision == "bf16",
        )  # fmt: skip
        trainer = SentenceTransformerTrainer(
            model=model, args=training_args, train_dataset=dataset, loss=losses.MultipleNegativesRankingLoss(model, scale=20.0)
        )
        trainer.train()
        model.save(str(out / "model"), safe_serialization=True)
        return trainer

    return run


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="msmarco-5k,cacm")
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per run (examples = steps x batch size)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", choices=["float32", "bf16"], default=None, help="both sides; default: bf16 where it is native")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from retriever_forge.encoding import resolve_model_path

    threads = set_threads(args.threads)
    if args.precision is None:
        from retriever_forge.numerics import bf16_is_native

        args.precision = "bf16" if bf16_is_native("cpu") else "float32"
    model_path = resolve_model_path(args.model)
    emit = Emitter(args.out)
    scratch = Path(tempfile.mkdtemp(prefix="bench-training-"))
    try:
        for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            doc_ids, texts = workload(name)
            n = args.steps * args.batch_size
            examples = build_examples(doc_ids, texts, n, args.negatives)
            forge, st = forge_side(model_path, examples, scratch, args), st_side(model_path, examples, scratch, args)
            out = {}
            times = alternate({"forge": lambda: out.__setitem__("forge", forge()), "st": lambda: out.__setitem__("st", st())}, args.rounds)  # noqa: B023 - called at once
            summary = ratio_summary(times, "forge", "st")
            st_steps = out["st"].state.global_step
            emit(
                {
                    "bench": "training",
                    "dataset": name,
                    "examples": n,
                    "batch_size": args.batch_size,
                    "negatives": args.negatives,
                    "max_seq_length": args.max_seq_length,
                    "precision": args.precision,
                    "forge_precision": out["forge"].precision,
                    "forge_steps": len(out["forge"].history),
                    "st_steps": st_steps,
                    "forge_examples_per_s": round(n / summary["forge_median_s"], 2),
                    "st_examples_per_s": round(n / summary["st_median_s"], 2),
                    **summary,
                    "forge_final_loss": out["forge"].history[-1]["loss"],
                    "peak_rss_mb": peak_rss_mb(),
                    **machine(threads),
                }
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(markdown(emit.rows, ["dataset", "precision", "examples", "batch_size", "negatives", "forge_examples_per_s", "st_examples_per_s",
                               "speedup_median", "speedup_min", "speedup_max", "rounds"]))  # fmt: skip
    return emit.rows


if __name__ == "__main__":
    main()
