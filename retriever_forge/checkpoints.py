"""Training checkpoints: weights, optimizer, scheduler and RNG state on disk.

A checkpoint is the folder ``root/step-N`` holding the weights as safetensors, the optimizer,
scheduler and RNG state as tensor-only ``torch.save`` files (loaded with ``weights_only=True``,
so a checkpoint cannot run code) and the training loop's state as JSON. It is written to a
temporary folder and renamed into place, so it is either complete or absent. Beside the
checkpoints lie the weights of the best dev evaluation so far, ``root/best-step-N.safetensors``.

Example:
    >>> import torch, tempfile
    >>> from pathlib import Path
    >>> model = torch.nn.Linear(2, 2)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    >>> root = Path(tempfile.mkdtemp())
    >>> save_checkpoint(root, 3, model, optimizer, scheduler, {"step": 3, "best_step": 0}, keep=2).name
    'step-3'
    >>> [(step, path.name) for step, path in list_checkpoints(root)]
    [(3, 'step-3')]
    >>> load_checkpoint(root / "step-3", model, optimizer, scheduler)
    {'step': 3, 'best_step': 0}
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "state.json"


def rng_state() -> dict:
    """The torch CPU RNG state and, with CUDA, every device's, as tensors (``torch.save``-able)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack([s for s in torch.cuda.get_rng_state_all()])
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned; the random stream goes on from that point.

    >>> saved = rng_state()
    >>> first = torch.rand(2)
    >>> set_rng_state(saved)
    >>> torch.equal(torch.rand(2), first)
    True
    """
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def save_weights(model, path: Path) -> None:
    """The model's parameters and buffers as one safetensors file (shared tensors stored once)."""
    from safetensors.torch import save_model

    save_model(model, str(path))


def load_weights(model, path: Path) -> None:
    """Load :func:`save_weights`' file into ``model`` in place, onto the device it lives on."""
    from safetensors.torch import load_model

    load_model(model, str(path), device=str(next(model.parameters()).device))


def best_weights_path(root: Path, step: int) -> Path:
    """Where the weights of step ``step`` lie while it is the best dev evaluation so far.

    >>> best_weights_path(Path("ckpt"), 12).as_posix()
    'ckpt/best-step-12.safetensors'
    """
    return root / f"best-step-{step}.safetensors"


def read_state(checkpoint: Path) -> dict:
    """The loop state a checkpoint folder was saved with."""
    return json.loads((checkpoint / STATE_FILE).read_text())


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as ``(step, folder)``, oldest first."""
    found = []
    for p in root.glob("step-*"):
        if p.is_dir() and p.name[5:].isdigit() and (p / STATE_FILE).exists():
            found.append((int(p.name[5:]), p))
    return sorted(found)


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, state: dict, keep: int) -> Path:
    """Write ``root/step-{step}``; keep the newest ``keep`` checkpoints (at least one) and the
    best-weights files their states (and ``state``) name; returns the new folder.

    ``state`` is the loop state as JSON-able data; it must hold ``best_step``.
    """
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / WEIGHTS_FILE)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a checkpoint is either complete or absent
    for _, old in list_checkpoints(root)[: -max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    wanted = {best_weights_path(root, read_state(p)["best_step"]).name for _, p in list_checkpoints(root)}
    wanted.add(best_weights_path(root, state["best_step"]).name)
    for p in root.glob("best-step-*.safetensors"):
        if p.name not in wanted:
            p.unlink()
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG state from ``path``; returns its loop state."""
    load_weights(model, path / WEIGHTS_FILE)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True, map_location="cpu"))
    set_rng_state(torch.load(path / "rng.pt", weights_only=True, map_location="cpu"))
    return read_state(path)
