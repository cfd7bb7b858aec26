"""Checkpoint I/O on a small torch model: weights, optimizer, scheduler, RNG and pruning."""

from __future__ import annotations

import torch

from retriever_forge.checkpoints import (
    STATE_FILE,
    WEIGHTS_FILE,
    best_weights_path,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    read_state,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
)


def _parts(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=10)
    return model, optimizer, scheduler


def _train_one_step(model, optimizer, scheduler) -> None:
    model(torch.randn(2, 3)).square().sum().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_weights_round_trip(tmp_path):
    trained, _, _ = _parts(0)
    fresh, _, _ = _parts(1)
    save_weights(trained, tmp_path / "w.safetensors")
    load_weights(fresh, tmp_path / "w.safetensors")
    for a, b in zip(trained.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_rng_state_replays_the_random_stream():
    state = rng_state()
    first = torch.randn(5)
    torch.randn(3)
    set_rng_state(state)
    assert torch.equal(torch.randn(5), first)
    # torch.save-able tensors only: a checkpoint's rng.pt loads with weights_only=True
    assert all(torch.is_tensor(v) for v in state.values())


def test_a_loaded_checkpoint_continues_like_the_run_that_saved_it(tmp_path):
    model, optimizer, scheduler = _parts(0)
    _train_one_step(model, optimizer, scheduler)
    path = save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {"step": 1, "best_step": 0}, keep=2)
    assert path == tmp_path / "step-1" and (path / WEIGHTS_FILE).exists() and (path / STATE_FILE).exists()
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        torch.load(path / name, weights_only=True)
    _train_one_step(model, optimizer, scheduler)  # the uninterrupted run's next step

    other, other_opt, other_sched = _parts(1)
    assert load_checkpoint(path, other, other_opt, other_sched) == {"step": 1, "best_step": 0} == read_state(path)
    _train_one_step(other, other_opt, other_sched)
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert other_sched.get_last_lr() == scheduler.get_last_lr()


def test_pruning_keeps_the_newest_checkpoints_and_the_best_weights_they_name(tmp_path):
    model, optimizer, scheduler = _parts(0)
    for step, best in [(1, 1), (2, 1), (3, 3), (4, 3)]:
        if step == best:
            save_weights(model, best_weights_path(tmp_path, step))
        save_checkpoint(tmp_path, step, model, optimizer, scheduler, {"step": step, "best_step": best}, keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert sorted(p.name for p in tmp_path.glob("best-step-*")) == ["best-step-3.safetensors"]
    assert best_weights_path(tmp_path, 3) == tmp_path / "best-step-3.safetensors"


def test_list_checkpoints_skips_incomplete_folders(tmp_path):
    model, optimizer, scheduler = _parts(0)
    save_checkpoint(tmp_path, 10, model, optimizer, scheduler, {"step": 10, "best_step": 0}, keep=5)
    save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {"step": 2, "best_step": 0}, keep=5)
    (tmp_path / "step-7").mkdir()  # no state.json: a crash mid-write leaves no such folder, but never trust one
    (tmp_path / ".step-8.tmp").mkdir()
    (tmp_path / "step-x").mkdir()
    assert list_checkpoints(tmp_path) == [(2, tmp_path / "step-2"), (10, tmp_path / "step-10")]
