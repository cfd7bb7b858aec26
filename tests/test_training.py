"""Training loop tests on a tiny random BERT (hidden 32, 2 layers) built in tmp_path: seconds."""

from __future__ import annotations

import dataclasses
import json
import math

import polars as pl
import pytest
import torch

from retriever_forge import training
from retriever_forge.encoding import model_folder_hash
from retriever_forge.schemas import TRAINING_EXAMPLES, conform
from retriever_forge.training import TrainingConfig, TrainingDiverged, evaluate_dev, loss_trend, train_encoder

TOPICS = {
    "sorting": "quicksort mergesort heapsort pivot partition array order",
    "hashing": "hash table bucket key collision probe lookup",
    "graphs": "graph vertex edge shortest path dijkstra weight",
    "parsing": "parser grammar token syntax tree compiler",
    "networks": "tcp packet route host protocol delivery",
    "storage": "disk block file cache page buffer",
    "matrices": "matrix inverse determinant eigenvalue linear system",
    "queues": "queue stack push pop scheduler process",
}


def _tiny_model(root) -> str:
    """A random 2-layer BERT with a WordPiece vocabulary of the toy words, as an ST folder."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w for text in TOPICS.values() for w in text.split()} | set(TOPICS))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, ":", "about", "what", "is"]
    hf = root / "hf"
    hf.mkdir(parents=True)
    (hf / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(hf / "vocab.txt"))  # transformers 5 names it vocab=
    assert tokenizer.convert_tokens_to_ids("hash") != tokenizer.unk_token_id
    tokenizer.save_pretrained(str(hf))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64
    )
    BertModel(config).save_pretrained(str(hf), safe_serialization=True)
    st = SentenceTransformer(
        modules=[models.Transformer(str(hf), max_seq_length=32), models.Pooling(32, "mean"), models.Normalize()], device="cpu"
    )
    out = root / "tiny-st"
    st.save(str(out))
    return str(out)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return _tiny_model(tmp_path_factory.mktemp("tiny"))


def _examples(n_per_topic: int = 6, dev_per_topic: int = 1) -> pl.DataFrame:
    """Toy task: a query names two words of a topic; its positive holds those two words, a
    grade-1 negative two other words of the topic, a grade-0 negative another topic's words."""
    names = list(TOPICS)
    rows = []
    for t, name in enumerate(names):
        words = TOPICS[name].split()
        for j in range(n_per_topic + dev_per_topic):
            a, b = words[j % len(words)], words[(j + 2) % len(words)]
            c, d = words[(j + 4) % len(words)], words[(j + 5) % len(words)]
            other = names[(t + 1 + j) % len(names)]
            o1, o2 = TOPICS[other].split()[:2]
            rows.append(
                {
                    "query_id": f"{name}-{j}",
                    "query": f"{a} {b}",
                    "positive_id": f"p-{name}-{j}",
                    "positive_text": f"{name}: {a} {b}",
                    "positive_grade": 3.0,
                    "negative_ids": [f"n-{name}-{j}", f"o-{other}-{j}"],
                    "negative_texts": [f"{name}: {c} {d}", f"{other}: {o1} {o2}"],
                    "negative_grades": [1.0, 0.0],
                    "negative_ranks": [10, 11],
                    "negative_scores": [0.5, 0.4],
                    "split": "dev" if j >= n_per_topic else "train",
                }
            )
    return conform(pl.DataFrame(rows, schema=TRAINING_EXAMPLES), TRAINING_EXAMPLES)


FAST = dict(batch_size=8, max_seq_length=32, learning_rate=3e-3, temperature=0.1, warmup_ratio=0.0, seed=0)


def test_loss_decreases_and_dev_improves(tiny_model, tmp_path):
    cfg = TrainingConfig(epochs=6, loss="infonce+graded", **FAST)
    result = train_encoder(tiny_model, _examples(), tmp_path / "run", cfg)
    losses = [h["loss"] for h in result.history]
    steps_per_epoch = len(losses) // 6
    first, last = sum(losses[:steps_per_epoch]), sum(losses[-steps_per_epoch:])
    assert last < 0.7 * first, losses
    mrr = [m["mrr@10"] for m in result.dev_metrics]
    assert mrr[0] == result.dev_metrics[0]["mrr@10"] and result.dev_metrics[0]["step"] == 0  # base model evaluated
    assert max(mrr[1:]) > mrr[0]
    assert result.best_step > 0 and result.examples_seen == 6 * 48
    assert result.stop_reason == "completed" and not result.stopped_early


def test_saved_model_loads_with_sentence_transformers(tiny_model, tmp_path):
    from sentence_transformers import SentenceTransformer

    result = train_encoder(tiny_model, _examples(2, 1), tmp_path / "run", TrainingConfig(epochs=1, **{**FAST, "max_seq_length": 16}))
    files = {p.name for p in result.model_dir.iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files and "modules.json" in files
    assert not any(name.endswith((".bin", ".pkl")) for name in files)
    model = SentenceTransformer(str(result.model_dir), device="cpu")
    assert model.encode(["hash table"]).shape == (1, 32)
    # Trained on 16 tokens, it still reads the base model's 32 at search time.
    assert model.max_seq_length == SentenceTransformer(tiny_model, device="cpu").max_seq_length == 32
    assert result.weights_hash == model_folder_hash(result.model_dir)
    saved = json.loads((tmp_path / "run" / "training_result.json").read_text())
    assert saved["weights_hash"] == result.weights_hash


def test_resume_after_crash_matches_uninterrupted_run(tiny_model, tmp_path):
    cfg = TrainingConfig(epochs=2, checkpoint_every_steps=2, eval_every_steps=3, **FAST)
    examples = _examples(3, 1)
    reference = train_encoder(tiny_model, examples, tmp_path / "straight", cfg)

    class Crash(Exception):
        pass

    def crash_at_step_5(event):
        if event["step"] == 5:
            raise Crash

    with pytest.raises(Crash):
        train_encoder(tiny_model, examples, tmp_path / "crashy", cfg, progress=crash_at_step_5)
    ckpts = sorted(p.name for p in (tmp_path / "crashy" / "checkpoints").glob("step-*"))
    assert ckpts == ["step-2", "step-4"]
    resumed = train_encoder(tiny_model, examples, tmp_path / "crashy", cfg)
    assert resumed.resumed_from_step == 4
    assert resumed.weights_hash == reference.weights_hash
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in reference.history]
    assert resumed.best_step == reference.best_step and resumed.examples_seen == reference.examples_seen


def test_resume_ignores_checkpoints_of_another_config(tiny_model, tmp_path):
    examples = _examples(2, 1)
    train_encoder(tiny_model, examples, tmp_path / "run", TrainingConfig(epochs=1, checkpoint_every_steps=1, **FAST))
    other = train_encoder(tiny_model, examples, tmp_path / "run", TrainingConfig(epochs=1, **{**FAST, "learning_rate": 1e-3}))
    assert other.resumed_from_step is None


def test_nan_loss_raises_and_keeps_last_checkpoint(tiny_model, tmp_path, monkeypatch):
    real = training.compute_batch_loss
    calls = {"n": 0}

    def nan_at_third_step(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(training, "compute_batch_loss", nan_at_third_step)
    cfg = TrainingConfig(epochs=1, checkpoint_every_steps=2, **FAST)
    with pytest.raises(TrainingDiverged, match="step 3") as err:
        train_encoder(tiny_model, _examples(3, 0), tmp_path / "run", cfg)
    assert err.value.checkpoint is not None and err.value.checkpoint.name == "step-2"
    assert (err.value.checkpoint / "weights.safetensors").exists()
    state = json.loads((err.value.checkpoint / "state.json").read_text())
    assert state["step"] == 2 and all(math.isfinite(h["loss"]) for h in state["history"])
    # Optimizer/scheduler/RNG files are tensor-only: they load with weights_only=True.
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        torch.load(err.value.checkpoint / name, weights_only=True)


def test_early_stopping_keeps_best_weights(tiny_model, tmp_path):
    # A learning rate this large wrecks the tiny model, so dev MRR never beats the base model.
    cfg = TrainingConfig(epochs=3, eval_every_steps=1, early_stopping_patience=2, **{**FAST, "learning_rate": 5.0, "max_grad_norm": 1e6})
    result = train_encoder(tiny_model, _examples(4, 1), tmp_path / "run", cfg)
    best = max(m["mrr@10"] for m in result.dev_metrics)
    assert result.stopped_early and result.stop_reason == "early_stopping"
    assert len(result.history) < 3 * 4
    assert [m["mrr@10"] for m in result.dev_metrics if m["step"] == result.best_step] == [best]
    if result.best_step == 0:  # the base weights come back unchanged
        assert result.weights_hash == model_folder_hash(result.model_dir)


def test_topic_batches_and_graded_wasserstein_train(tiny_model, tmp_path):
    cfg = TrainingConfig(epochs=1, loss="graded", graded_distance="wasserstein", topic_batches=True, n_topics=4, **FAST)
    result = train_encoder(tiny_model, _examples(4, 1), tmp_path / "run", cfg)
    assert all(math.isfinite(h["loss"]) for h in result.history) and result.examples_seen == 32


def test_evaluate_dev_perfect_and_worst_cases(tiny_model):
    from sentence_transformers import SentenceTransformer

    from retriever_forge.training import _Batchable

    model = SentenceTransformer(tiny_model, device="cpu")
    same = _Batchable(["hash table"], ["a"], ["hash table"], [3.0], [["b"]], [["tcp packet route"]], [[0.0]])
    metrics = evaluate_dev(model, same)
    assert metrics["mrr@10"] == 1.0 and metrics["recall@1"] == 1.0 and metrics["pool"] == 2


def test_dev_is_encoded_at_the_published_length_and_training_keeps_its_own(tiny_model, monkeypatch):
    """Training truncates to its max_seq_length; dev is scored as search scores the published model."""
    from sentence_transformers import SentenceTransformer

    from retriever_forge import training
    from retriever_forge.training import _Batchable

    model = SentenceTransformer(tiny_model, device="cpu")
    model.max_seq_length = 8
    seen = []
    real = training.encode_with_model
    monkeypatch.setattr(training, "encode_with_model", lambda m, texts, **kw: seen.append(m.max_seq_length) or real(m, texts, **kw))
    dev = _Batchable(["hash table"], ["a"], ["hash table"], [3.0], [["b"]], [["tcp packet route"]], [[0.0]])
    evaluate_dev(model, dev, max_length=64)
    assert seen == [64, 64] and model.max_seq_length == 8
    evaluate_dev(model, dev)
    assert seen[2:] == [8, 8]


def test_corpus_distractors_join_the_dev_pool_and_can_outrank_the_positive(tiny_model):
    """A corpus passage that is the query itself scores above the positive: with it in the pool
    (dev_distractors) the positive drops to rank 2; a sample is seeded and capped."""
    from sentence_transformers import SentenceTransformer

    from retriever_forge.training import _Batchable, dev_pool

    model = SentenceTransformer(tiny_model, device="cpu")
    dev = _Batchable(["hash table index"], ["a"], ["hash table"], [3.0], [["b"]], [["tcp packet route"]], [[0.0]])
    corpus = pl.DataFrame({"doc_id": ["a", "c", "d", "e"], "text": ["hash table", "hash table index", "sort list", "graph path"]})
    pool = dev_pool(dev, corpus, distractors=10)
    assert sorted(pool.ids) == ["a", "b", "c", "d", "e"]  # the positive "a" is not added twice
    metrics = evaluate_dev(model, dev, pool)
    assert metrics["pool"] == 5 and metrics["recall@1"] == 0.0 and metrics["mrr@10"] == 0.5
    small = dev_pool(dev, corpus, distractors=2, seed=1)
    assert len(small.texts) <= 4 and small.ids == dev_pool(dev, corpus, distractors=2, seed=1).ids
    assert dev_pool(dev, corpus, distractors=0).texts == ["hash table", "tcp packet route"]


def test_dev_corpus_changes_the_dev_pool_and_the_checkpoint_fingerprint(tiny_model, tmp_path):
    examples = _examples(3, 1)
    corpus = pl.DataFrame({"doc_id": [f"x{i}" for i in range(6)], "text": [f"{w} filler text" for w in "abcdef"]})
    cfg = TrainingConfig(epochs=1, **FAST)
    lists_only = train_encoder(tiny_model, examples, tmp_path / "lists", cfg)
    with_corpus = train_encoder(tiny_model, examples, tmp_path / "lists", cfg, dev_corpus=corpus)
    assert with_corpus.resumed_from_step is None  # another dev pool: the first run's checkpoint is not resumed
    assert with_corpus.dev_metrics[0]["pool"] == lists_only.dev_metrics[0]["pool"] + 6


def test_time_budget_and_max_steps_stop_training(tiny_model, tmp_path):
    examples = _examples(4, 1)
    budget = train_encoder(tiny_model, examples, tmp_path / "budget", TrainingConfig(epochs=2, time_budget_s=0.0, **FAST))
    assert budget.stop_reason == "time_budget" and budget.stopped_early and len(budget.history) == 1
    assert budget.dev_metrics[-1]["step"] == 1  # the weights it stopped with were evaluated
    capped = train_encoder(tiny_model, examples, tmp_path / "capped", TrainingConfig(epochs=2, max_steps=3, **FAST))
    assert capped.stop_reason == "max_steps" and len(capped.history) == 3 and not capped.stopped_early
    assert capped.history[-1]["lr"] == 0.0  # the schedule decays to zero at max_steps


def test_loss_trend_check_has_known_answers():
    assert loss_trend([1.0, 2.0, 3.0])["decreasing"]  # too few steps to judge: passes, and says so
    assert loss_trend([2.0] * 25 + [1.0] * 25)["decreasing"]
    assert not loss_trend([1.0] * 25 + [2.0] * 25)["decreasing"]


def test_grad_cache_training_run(tiny_model, tmp_path):
    cfg = TrainingConfig(epochs=1, grad_cache_chunk_size=4, checkpoint_every_steps=1, **FAST)
    result = train_encoder(tiny_model, _examples(3, 1), tmp_path / "run", cfg)
    assert len(result.history) == 3 and all(math.isfinite(h["loss"]) for h in result.history)


def test_publication_guard_keeps_the_base_unless_the_dev_gain_is_beyond_noise(tiny_model, tmp_path):
    # The same run as test_loss_decreases_and_dev_improves, whose dev MRR rises well above the
    # base's: with a guard below its z it is published; with an impossible bar the base is kept.
    cfg = TrainingConfig(epochs=6, loss="infonce", **FAST)
    guarded = train_encoder(tiny_model, _examples(), tmp_path / "z", dataclasses.replace(cfg, min_dev_gain_z=0.5))
    last = guarded.dev_metrics[-1]
    assert last["gain"] > 0 and last["gain_z"] > 0.5 and guarded.best_step > 0
    strict = train_encoder(tiny_model, _examples(), tmp_path / "strict", dataclasses.replace(cfg, min_dev_gain_z=1e12))
    assert strict.best_step == 0 and strict.weights_hash == model_folder_hash(strict.model_dir)


def test_dev_gain_over_base_has_known_answers():
    assert training.dev_gain_over_base([0.5, 0.5], [0.5, 0.5]) == {"gain": 0.0, "gain_se": 0.0, "gain_z": 0.0}
    same_gain = training.dev_gain_over_base([1.0, 1.0], [0.5, 0.5])
    assert same_gain["gain"] == 0.5 and same_gain["gain_se"] == 0.0 and same_gain["gain_z"] > 1e6
    assert training.dev_gain_over_base([0.0, 0.5], [0.5, 0.5])["gain"] == -0.25


def _parts(tiny_model, lr: float = 3e-3):
    from sentence_transformers import SentenceTransformer
    from transformers import get_linear_schedule_with_warmup

    model = SentenceTransformer(tiny_model, device="cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    return model, optimizer, get_linear_schedule_with_warmup(optimizer, 0, 10)


def test_start_or_resume_loads_only_a_checkpoint_with_the_same_fingerprint(tiny_model, tmp_path):
    from retriever_forge.checkpoints import save_checkpoint

    model, optimizer, scheduler = _parts(tiny_model)
    saved = dataclasses.asdict(training.LoopState(fingerprint="f1", step=3, best_step=2, history=[{"step": 1}]))
    save_checkpoint(tmp_path, 3, model, optimizer, scheduler, saved, keep=2)
    state, path = training.start_or_resume(tmp_path, "f1", *_parts(tiny_model), resume=True)
    assert path == tmp_path / "step-3" and dataclasses.asdict(state) == saved
    state, path = training.start_or_resume(tmp_path, "f1", *_parts(tiny_model), resume=False)
    assert path is None and state == training.LoopState(fingerprint="f1") and list(tmp_path.iterdir()) == []
    save_checkpoint(tmp_path, 3, model, optimizer, scheduler, saved, keep=2)
    state, path = training.start_or_resume(tmp_path, "other", *_parts(tiny_model), resume=True)
    assert path is None and state.step == 0 and not (tmp_path / "step-3").exists()


def test_train_step_updates_the_weights_and_a_non_finite_loss_touches_nothing(tiny_model, monkeypatch):
    data = training._Batchable.from_frame(_examples(2, 0), 2)
    cfg = TrainingConfig(**FAST)
    model, optimizer, scheduler = _parts(tiny_model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = training.train_step(model, optimizer, scheduler, data, list(range(8)), cfg, "cpu")
    assert math.isfinite(loss) and loss > 0 and scheduler.last_epoch == 1
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())  # zeroed for the next step

    real = training.compute_batch_loss
    monkeypatch.setattr(training, "compute_batch_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    after_one = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert math.isnan(training.train_step(model, optimizer, scheduler, data, list(range(8)), cfg, "cpu"))
    assert scheduler.last_epoch == 1 and all(torch.equal(after_one[n], p) for n, p in model.named_parameters())


def test_evaluate_and_keep_best_applies_the_publication_guard(tiny_model, tmp_path):
    from sentence_transformers import SentenceTransformer

    dev = training._Batchable.from_frame(_examples(6, 1).filter(pl.col("split") == "dev"), 3)
    model = SentenceTransformer(tiny_model, device="cpu")
    cfg = TrainingConfig(min_dev_gain_z=1e12, **FAST)
    state = training.LoopState(fingerprint="f")
    base = training.evaluate_and_keep_best(model, dev, state, cfg, tmp_path)
    assert state.base_rr is not None and len(state.base_rr) == len(dev) and state.best_step == 0 and "gain" not in base
    # A later step with a higher MRR@10 and a positive gain over a base that found nothing...
    state.step, state.best_metric, state.base_rr = 4, 0.0, [0.0] * len(dev)
    metrics = training.evaluate_and_keep_best(model, dev, state, cfg, tmp_path)
    assert metrics["gain"] > 0 and metrics["mrr@10"] > 0 and state.dev_metrics == [base, metrics]
    # ...is not published while its gain is within the (impossible) bar, and is with a bar of 0.
    assert state.best_step == 0 and state.evals_without_improvement == 1 and list(tmp_path.iterdir()) == []
    state.step = 5
    training.evaluate_and_keep_best(model, dev, state, dataclasses.replace(cfg, min_dev_gain_z=0.0), tmp_path)
    assert state.best_step == 5 and state.evals_without_improvement == 0
    assert [p.name for p in tmp_path.iterdir()] == ["best-step-5.safetensors"]


def test_restore_best_brings_back_the_best_steps_weights(tiny_model, tmp_path):
    from retriever_forge.checkpoints import best_weights_path, save_weights

    model, optimizer, scheduler = _parts(tiny_model)
    best = {n: p.detach().clone() for n, p in model.named_parameters()}
    save_weights(model, best_weights_path(tmp_path, 2))
    for p in model.parameters():
        p.data.add_(1.0)
    state = training.LoopState(fingerprint="f", step=6, best_step=2)
    restored, is_base = training.restore_best(model, state, tmp_path, tiny_model, "cpu")
    assert restored is model and not is_base
    assert all(torch.equal(best[n], p) for n, p in restored.named_parameters())
    base, is_base = training.restore_best(model, dataclasses.replace(state, best_step=0), tmp_path, tiny_model, "cpu")
    assert is_base and base is not model and all(torch.equal(best[n], p) for n, p in base.named_parameters())
    assert training.restore_best(model, dataclasses.replace(state, best_step=6), tmp_path, tiny_model, "cpu") == (model, False)
