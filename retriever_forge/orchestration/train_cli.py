"""Fine-tuning as a command line, for ``torchrun`` (data parallel over GPUs or nodes).

    torchrun --nproc_per_node 4 -m retriever_forge.orchestration.train_cli \\
        --examples training_examples.parquet --base-model all-MiniLM-L6-v2 \\
        --output-dir /scratch/run --config-json '{"batch_size": 64}'

Each of the ``WORLD_SIZE`` processes trains :func:`retriever_forge.training.train_encoder` on
its own slice of the training rows (row ``i`` goes to rank ``i mod WORLD_SIZE``) and, after
every backward pass, gradients are averaged with one ``all_reduce`` (NCCL on GPUs, gloo on
CPU), so every rank takes the same optimizer step and the weights stay identical. All ranks
run the same number of steps (set from the smallest slice). In-batch negatives are those of a
rank's own batch, as with sentence-transformers' trainer under DDP without gathering. Dev
evaluation runs on every rank over the same dev rows, so best-step and early-stopping
decisions agree; rank 0 writes the model to ``--output-dir/model`` and a ``result.json``.

Started by Dagster Pipes (``PipesSubprocessClient``, see :mod:`retriever_forge.orchestration.scaleout`),
rank 0 reports the result to the orchestrating asset as materialization metadata. Without
``torchrun`` (no ``WORLD_SIZE``) it is a plain single-process run.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import polars as pl


def shard_examples(examples: pl.DataFrame, rank: int, world_size: int) -> pl.DataFrame:
    """Rank ``rank``'s training rows (every ``world_size``-th) plus all dev rows.

    >>> df = pl.DataFrame({"split": ["train"] * 5 + ["dev"], "query": list("abcdef")})
    >>> shard_examples(df, 1, 2)["query"].to_list()
    ['b', 'd', 'f']
    """
    indexed = examples.with_row_index("_row")
    train = indexed.filter(pl.col("split") == "train").with_row_index("_k").filter(pl.col("_k") % world_size == rank).drop("_k")
    dev = indexed.filter(pl.col("split") == "dev")
    return pl.concat([train, dev]).sort("_row").drop("_row")


def equal_steps(train_rows: int, world_size: int, batch_size: int, epochs: int) -> int:
    """Steps every rank can take: full batches of the smallest slice, times epochs.

    >>> equal_steps(10, 3, 2, 2)   # slices of 4, 3, 3 rows -> 1 full batch of 2 each epoch
    2
    """
    smallest = train_rows // world_size
    return max(1, smallest // batch_size) * epochs


def average_gradients(world_size: int):
    """A ``grad_sync`` callback: one flat ``all_reduce`` of every gradient, divided by the world size."""
    import torch
    import torch.distributed as dist

    def sync(model) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world_size
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    return sync


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fine-tune an encoder on TRAINING_EXAMPLES rows (torchrun-aware).")
    ap.add_argument("--examples", required=True, help="Parquet file of TRAINING_EXAMPLES rows")
    ap.add_argument("--base-model", required=True)
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--config-json", default="{}", help="TrainingConfig fields as JSON")
    ap.add_argument(
        "--dev-corpus", help="Parquet file of doc_id, text: the corpus dev queries are ranked against (TrainingConfig.dev_distractors)"
    )
    ap.add_argument("--no-resume", action="store_true")
    args = ap.parse_args(argv)

    import dataclasses

    import torch
    import torch.distributed as dist

    from retriever_forge.training import TrainingConfig, train_encoder

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    values = json.loads(args.config_json)
    cfg = TrainingConfig(**values)
    if cfg.device is None:
        cfg.device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if cfg.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(cfg.device))
    examples = pl.read_parquet(args.examples)
    dev_corpus = pl.read_parquet(args.dev_corpus) if args.dev_corpus else None
    out = Path(args.output_dir)
    sync = None
    if world > 1:
        dist.init_process_group(backend="nccl" if cfg.device.startswith("cuda") else "gloo")
        n_train = examples.filter(pl.col("split") == "train").height
        steps = equal_steps(n_train, world, cfg.batch_size, cfg.epochs)
        cfg = dataclasses.replace(cfg, max_steps=min(steps, cfg.max_steps or steps), time_budget_s=None)
        examples = shard_examples(examples, rank, world)
        sync = average_gradients(world)
        if rank > 0:
            out = out / "ranks" / f"rank-{rank}"  # checkpoints of the other ranks; rank 0 publishes
    pipes = _open_pipes() if rank == 0 else None
    try:
        result = train_encoder(args.base_model, examples, out, cfg, resume=not args.no_resume, grad_sync=sync, dev_corpus=dev_corpus)
        summary = {
            "world_size": world,
            "steps": len(result.history),
            "final_loss": result.history[-1]["loss"] if result.history else None,
            "weights_hash": result.weights_hash,
            "model_dir": str(result.model_dir),
            "device": result.device,
            "stop_reason": result.stop_reason,
            # Same on every rank when gradients were averaged (only rank 0 writes a full model
            # folder: transformers saves weights from the main process only).
            "last_checkpoint_sha256": _last_checkpoint_digest(out),
        }
        if rank == 0:
            (Path(args.output_dir) / "result.json").write_text(json.dumps(summary, indent=1))
            if pipes is not None:
                pipes.report_asset_materialization(metadata={k: v for k, v in summary.items() if v is not None})
        print(json.dumps({"rank": rank, **summary}), flush=True)
    finally:
        if pipes is not None:
            pipes.__exit__(None, None, None)
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _last_checkpoint_digest(out: Path) -> str | None:
    from retriever_forge.checkpoints import WEIGHTS_FILE, list_checkpoints
    from retriever_forge.hashing import hash_file

    found = list_checkpoints(out / "checkpoints") if (out / "checkpoints").exists() else []
    return hash_file(found[-1][1] / WEIGHTS_FILE) if found else None


def _open_pipes():
    """The Dagster Pipes context when launched by a Pipes client, else None."""
    try:
        from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes
    except ImportError:
        return None
    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        return None
    return open_dagster_pipes().__enter__()


if __name__ == "__main__":
    raise SystemExit(main())
