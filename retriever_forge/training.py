"""Fine-tuning a sentence-transformers encoder on mined training examples.

A small, explicit PyTorch loop rather than sentence-transformers' trainer, because the graded
list-wise loss needs per-example lists with grades and TAS needs its own batch order:

* AdamW (no decay on biases and LayerNorm) with transformers' linear warmup/decay schedule,
  gradient clipping, bf16 autocast where bf16 is native (CUDA, CPUs with AVX512-BF16/AMX);
* losses from :mod:`retriever_forge.losses` (``infonce``, ``graded`` or their sum);
* batches from :mod:`retriever_forge.batching`, fixed by ``(seed, epoch)``, with no two
  queries of a batch sharing a positive;
* dev evaluation (MRR@10 of each dev query's positive among all dev passages and a sample of
  the corpus, :func:`dev_pool`) every ``eval_every_steps`` and at the start, keeping the best
  weights only beyond noise (``min_dev_gain_z``); early stopping;
* checkpoints under ``output_dir/checkpoints`` (:mod:`retriever_forge.checkpoints`) holding
  the :class:`LoopState`; ``resume=True`` continues from the latest one and ends with the
  same weights as an uninterrupted run;
* gradient caching (:mod:`retriever_forge.grad_cache`) when a batch's activations do not fit;
* a non-finite loss raises :class:`TrainingDiverged`, leaving the last good checkpoint.

:func:`train_encoder` is the loop; its pieces are :func:`start_or_resume`, :func:`next_batch`,
:func:`train_step`, :func:`evaluate_and_keep_best` and :func:`restore_best`.

Example (needs a real encoder, so not a doctest)::

    from retriever_forge.training import TrainingConfig, train_encoder
    result = train_encoder("all-MiniLM-L6-v2", examples, Path("out"), TrainingConfig(loss="infonce"))
    SentenceTransformer(str(result.model_dir)).encode(["a query"])
"""

from __future__ import annotations

import functools
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import torch

from retriever_forge import losses
from retriever_forge.adapters import AdapterSettings, attach_adapter, export_and_merge
from retriever_forge.batching import TopicBatcher, no_duplicate_positives, shuffled_batches
from retriever_forge.checkpoints import (
    best_weights_path,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    read_state,
    save_checkpoint,
    save_weights,
)
from retriever_forge.encoding import encode_with_model, model_folder_hash, open_sentence_transformer, resolve_model_path
from retriever_forge.grad_cache import embed_with_gradients
from retriever_forge.hashing import hash_bytes, hash_json
from retriever_forge.numerics import autocast_device_type, bf16_is_native

log = logging.getLogger(__name__)

LossName = Literal["infonce", "graded", "infonce+graded"]


@dataclass
class TrainingConfig:
    """Hyper-parameters of :func:`train_encoder`.

    ``eval_every_steps``/``checkpoint_every_steps`` of 0 mean once per epoch;
    ``early_stopping_patience`` counts dev evaluations without improvement (0: off);
    ``n_topics`` of 0 picks about one topic per four batches.

    Defaults come from ``bench/train_probe.py`` on cacm (2-core CPU, ~900 weak pseudo-queries,
    one epoch): lr 2e-5 gave +0.020 nDCG@10 where 5e-5 gave +0.014 (and, with title-only
    queries, -0.045), with msmarco-5k within 0.002 of the base model. Three negatives and
    128 training tokens keep a step's activations near 6 GB at worst on CPU (256 tokens: about
    15 GB; raise them on a GPU or with ``grad_cache_chunk_size``); passages are still encoded
    at the encoder's own length at search time.

    Args:
        epochs: Passes over the training examples.
        min_steps: More passes (up to ``max_epochs``) when ``epochs`` give fewer optimiser steps than this (0: off).
        max_epochs: The most passes ``min_steps`` may ask for.
        learning_rate: Peak AdamW learning rate.
        batch_size: Queries per step.
        temperature: Softmax temperature of the contrastive loss.
        loss: infonce | graded | infonce+graded
        graded_weight: Weight of the graded list-wise loss.
        grade_temperature: Temperature turning judged grades into the graded loss's target distribution.
        graded_distance: kl | wasserstein: how the graded loss compares score and grade distributions.
        negatives_per_example: Mined negatives per query in a step.
        in_batch_negatives: Use the other queries' passages of the batch as negatives too.
        topic_batches: TAS-Balanced topic-aware batches.
        n_topics: Topic clusters for topic_batches (0: about one per four batches).
        warmup_ratio: Share of steps with a linearly rising learning rate.
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradient norm clipping.
        max_seq_length: Tokens per text in training.
        grad_cache_chunk_size: GradCache: encode at most this many texts per graph (0: off); lets batch_size reach 256-1024.
        max_steps: Stop after this many steps (null: the epochs decide).
        eval_every_steps: Steps between dev evaluations (0: once per epoch).
        eval_at_start: Evaluate the base model on dev before the first step.
        early_stopping_patience: Dev evaluations without gain before stopping (0: off).
        max_dev_queries: Dev queries per evaluation.
        dev_distractors: Corpus passages (a seeded sample) added to the dev pool, so dev queries are ranked against the corpus as in a search (0: the dev lists only).
        min_dev_gain_z: Publication guard: keep the base weights unless the dev MRR@10 gain exceeds this many standard errors (0: any gain).
        checkpoint_every_steps: Steps between checkpoints (0: once per epoch).
        keep_checkpoints: Checkpoints kept on disk.
        time_budget_s: Stop (keeping the best weights) once training took this long (null: no limit).
        bf16: Autocast to bfloat16 where it is native (GPUs, CPUs with AVX512-BF16/AMX).
        seed: Seeds initialisation, batching and dropout.
        device: cpu / cuda (null: cuda when available).
        adapter: none (full fine-tuning) | lora | spt (sensitivity-aware: LoRA + sparse).
        lora_rank: LoRA rank.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: Dropout on the LoRA path.
        target_modules: Linear layer names to adapt (null: attention and MLP projections).
        tunable_parameter_budget: SPT: tunable parameters (count, or fraction < 1; 0: as many as LoRA).
        spt_sensitivity_batches: SPT: batches whose gradients measure each weight's sensitivity.
        spt_structured_threshold: SPT: LoRA on a matrix above this many sensitive positions (0: LoRA's cost).
        pooling: model | mean | cls | last | gem | ggem | latent_attention
        latent_attention_latents: Latent-attention pooling: latent vectors.
        latent_attention_heads: Latent-attention pooling: heads.
        bidirectional: Decoder LLMs: bidirectional attention (training and encoding).
        query_instruction: Prefix for queries only (null: the model's own query prompt).
        gradient_checkpointing: Recompute activations in backward.
    """

    epochs: int = 1
    # A small corpus gives few batches per epoch: 500 queries are 16 steps of 32, too few for the
    # encoder to move. min_steps runs more passes over them (a larger corpus is unaffected).
    min_steps: int = 0
    max_epochs: int = 4
    learning_rate: float = 2e-5
    batch_size: int = 32
    temperature: float = 0.05
    loss: LossName = "infonce"
    graded_weight: float = 1.0
    grade_temperature: float = 1.0
    graded_distance: Literal["kl", "wasserstein"] = "kl"
    negatives_per_example: int = 3
    in_batch_negatives: bool = True
    topic_batches: bool = False
    n_topics: int = 0
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_seq_length: int = 128
    # Gradient caching: encode at most this many texts per graph (0: one graph per batch).
    # Activation memory grows with texts x length^2: 32 queries + 96 passages of 256 tokens
    # peaked at 14.9 GB on CPU in one graph, 5.6 GB in chunks of 32 (for ~1/3 more compute).
    grad_cache_chunk_size: int = 0
    max_steps: int | None = None
    eval_every_steps: int = 0
    eval_at_start: bool = True
    early_stopping_patience: int = 0
    max_dev_queries: int = 200  # dev evaluation encodes these queries and their lists
    # With train_encoder(dev_corpus=...): the dev pool also holds this many corpus passages. The
    # dev lists alone (a few hundred passages) leave a good base model at MRR@10 ~0.9, with no
    # room for a gain to show beyond noise; 3,000 passages cost ~20 s an evaluation on 2 cores.
    dev_distractors: int = 3000
    # Publication guard: a step's weights replace the base model's only if their dev MRR@10
    # beats the base's by more than this many standard errors of the paired per-query
    # difference (0: any gain). A gain within noise keeps the base weights.
    min_dev_gain_z: float = 0.0
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 2
    time_budget_s: float | None = None  # stop (keeping the best weights) once exceeded
    bf16: bool = True  # autocast to bfloat16 where it is native (see retriever_forge.numerics); float32 elsewhere
    seed: int = 0
    device: str | None = None
    # Encoder shape (retriever_forge.adapters, .pooling, .decoder): parameter-efficient tuning,
    # the pooling head, a decoder LLM's attention mask and the queries' instruction prefix.
    adapter: str = "none"  # none | lora | spt
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None  # None: the attention and MLP projections
    tunable_parameter_budget: float = 0  # SPT: parameters (count, or fraction < 1); 0: LoRA's count
    spt_sensitivity_batches: int = 4
    spt_structured_threshold: int = 0  # SPT: LoRA above this many sensitive positions; 0: LoRA's cost
    pooling: str = "model"  # model | mean | cls | last | gem | ggem | latent_attention
    latent_attention_latents: int = 512
    latent_attention_heads: int = 8
    bidirectional: bool = False  # decoder LLMs: replace the causal mask (training and encoding)
    query_instruction: str | None = None  # None: the model's own "query" prompt (often empty)
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        from retriever_forge.pooling import POOLING_MODES

        if self.loss not in ("infonce", "graded", "infonce+graded"):
            raise ValueError(f"unknown loss {self.loss!r}")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {POOLING_MODES}")
        self.adapter_settings()  # validates the adapter fields
        if self.batch_size < 1 or self.epochs < 0:
            raise ValueError("batch_size must be >= 1 and epochs >= 0")

    def adapter_settings(self) -> AdapterSettings:
        return AdapterSettings(
            kind=self.adapter, lora_rank=self.lora_rank, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
            target_modules=self.target_modules, tunable_parameter_budget=self.tunable_parameter_budget,
            spt_sensitivity_batches=self.spt_sensitivity_batches, spt_structured_threshold=self.spt_structured_threshold,
        )  # fmt: skip

    def fingerprint_fields(self) -> dict:
        """The fields that change the trained weights (a checkpoint is resumed only if equal)."""
        d = asdict(self)
        for k in ("checkpoint_every_steps", "keep_checkpoints", "time_budget_s", "device"):
            d.pop(k)
        return d


@dataclass
class TrainingResult:
    model_dir: Path
    weights_hash: str
    history: list[dict] = field(default_factory=list)  # per step: step, epoch, loss, lr
    dev_metrics: list[dict] = field(default_factory=list)  # per evaluation: step, mrr@10, ...
    best_step: int = 0
    stopped_early: bool = False
    device: str = "cpu"
    precision: str = "float32"  # or "bfloat16-autocast"
    examples_seen: int = 0
    seconds: float = 0.0
    stop_reason: str = "completed"  # completed / early_stopping / time_budget / max_steps
    resumed_from_step: int | None = None
    trainable_parameters: int = 0
    adapter: dict | None = None  # what retriever_forge.adapters chose and published (None: full fine-tuning)

    def to_json(self) -> dict:
        d = asdict(self)
        d["model_dir"] = str(self.model_dir)
        return d


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left in place."""

    def __init__(self, step: int, loss: float, checkpoint: Path | None):
        self.step, self.loss, self.checkpoint = step, loss, checkpoint
        where = f"last good checkpoint: {checkpoint}" if checkpoint else "no checkpoint was saved yet"
        super().__init__(f"training diverged at step {step}: loss is {loss}; {where}. Lower the learning rate or check the examples.")


# --------------------------------------------------------------------------------------------
# Data preparation.


@dataclass
class _Batchable:
    """Training examples as plain Python lists, indexed by example row."""

    queries: list[str]
    positive_ids: list[str]
    positive_texts: list[str]
    positive_grades: list[float]
    negative_ids: list[list[str]]
    negative_texts: list[list[str]]
    negative_grades: list[list[float]]

    @classmethod
    def from_frame(cls, df: pl.DataFrame, max_negatives: int) -> _Batchable:
        def cap(col: str) -> list[list]:
            return [list(v or [])[:max_negatives] for v in df[col].to_list()]

        return cls(
            queries=df["query"].to_list(),
            positive_ids=df["positive_id"].to_list(),
            positive_texts=df["positive_text"].to_list(),
            positive_grades=[3.0 if g is None else float(g) for g in df["positive_grade"].to_list()],
            negative_ids=cap("negative_ids"),
            negative_texts=cap("negative_texts"),
            negative_grades=[[0.0 if g is None else float(g) for g in gs] for gs in cap("negative_grades")],
        )

    def __len__(self) -> int:
        return len(self.queries)


def _frame_digest(df: pl.DataFrame) -> str:
    return hash_bytes(df.hash_rows(seed=0).to_numpy().tobytes() + str(df.columns).encode())


def planned_epochs(n_examples: int, cfg: TrainingConfig) -> int:
    """``cfg.epochs``, or more (at most ``cfg.max_epochs``) until there are ``cfg.min_steps`` steps.

    >>> planned_epochs(500, TrainingConfig(epochs=1, min_steps=48))  # 16 steps an epoch
    3
    >>> planned_epochs(2700, TrainingConfig(epochs=1, min_steps=48))  # 85 steps: unchanged
    1
    """
    steps_per_epoch = max(1, math.ceil(n_examples / cfg.batch_size))
    wanted = math.ceil(cfg.min_steps / steps_per_epoch)
    return max(cfg.epochs, min(wanted, max(cfg.max_epochs, cfg.epochs)))


def _plan_batches(train: _Batchable, cfg: TrainingConfig, model) -> list[list[list[int]]]:
    """Batches for every epoch (index lists into ``train``), fixed by the seed."""
    batcher = None
    if cfg.topic_batches and len(train) > cfg.batch_size:
        n_topics = cfg.n_topics or max(2, len(train) // (4 * cfg.batch_size))
        emb = encode_with_model(model, train.queries, batch_size=128, show_progress=False)
        batcher = TopicBatcher(emb, cfg.batch_size, n_topics, seed=cfg.seed)
    plan = []
    for epoch in range(planned_epochs(len(train), cfg)):
        batches = batcher.batches(epoch) if batcher else shuffled_batches(len(train), cfg.batch_size, cfg.seed, epoch)
        plan.append(no_duplicate_positives(batches, train.positive_ids))
    return plan


# --------------------------------------------------------------------------------------------
# Forward pass and loss.


def compute_batch_loss(model, data: _Batchable, batch: list[int], cfg: TrainingConfig) -> torch.Tensor:
    """The configured loss of one batch of example indices (embeddings through
    :func:`retriever_forge.grad_cache.embed_with_gradients`)."""
    b = len(batch)
    n = max((len(data.negative_texts[i]) for i in batch), default=0)
    doc_texts = [data.positive_texts[i] for i in batch]
    slots = []  # (row, column) of each negative within the padded (B, n) grid
    for r, i in enumerate(batch):
        for c, text in enumerate(data.negative_texts[i]):
            doc_texts.append(text)
            slots.append((r, c))
    q = embed_with_gradients(model, [data.queries[i] for i in batch], grad_cache_chunk=cfg.grad_cache_chunk_size)
    docs = embed_with_gradients(model, doc_texts, grad_cache_chunk=cfg.grad_cache_chunk_size)
    pos = docs[:b]
    negs = torch.zeros(b, n, docs.shape[1], device=docs.device, dtype=docs.dtype)
    neg_mask = torch.zeros(b, n, dtype=torch.bool, device=docs.device)
    grades = torch.zeros(b, 1 + n, device=docs.device)
    if slots:
        rows = torch.tensor([r for r, _ in slots], device=docs.device)
        cols = torch.tensor([c for _, c in slots], device=docs.device)
        negs = negs.index_put((rows, cols), docs[b:])
        neg_mask[rows, cols] = True
        grades[rows, cols + 1] = torch.tensor([data.negative_grades[batch[r]][c] for r, c in slots], device=docs.device)
    grades[:, 0] = torch.tensor([data.positive_grades[i] for i in batch], device=docs.device)

    # Integer passage ids, so a passage that is one query's positive and another's negative is
    # not pushed away from the first query as an in-batch negative.
    vocab: dict[str, int] = {}
    pos_ids = torch.tensor([vocab.setdefault(data.positive_ids[i], len(vocab)) for i in batch], device=docs.device)
    neg_ids = torch.full((b, n), -1, dtype=torch.long, device=docs.device)
    for r, i in enumerate(batch):
        for c, d in enumerate(data.negative_ids[i]):
            neg_ids[r, c] = vocab.setdefault(d, len(vocab))

    total = torch.zeros((), device=docs.device)
    if cfg.loss in ("infonce", "infonce+graded"):
        total = total + losses.info_nce(
            q, pos, negs, cfg.temperature, in_batch=cfg.in_batch_negatives, neg_mask=neg_mask, pos_ids=pos_ids, neg_ids=neg_ids
        )
    if cfg.loss in ("graded", "infonce+graded"):
        weight = cfg.graded_weight if cfg.loss == "infonce+graded" else 1.0
        lists = torch.cat([pos.unsqueeze(1), negs], dim=1)
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=docs.device), neg_mask], dim=1)
        total = total + weight * losses.graded_listwise_kl(
            q, lists, grades, cfg.temperature, cfg.grade_temperature, mask=mask, distance=cfg.graded_distance
        )
    return total


# --------------------------------------------------------------------------------------------
# Dev evaluation.


@dataclass
class DevPool:
    """The passages dev queries are ranked against, by id: row ``ids[doc_id]`` of ``texts``."""

    ids: dict[str, int]
    texts: list[str]


def dev_pool(dev: _Batchable, corpus: pl.DataFrame | None = None, distractors: int = 0, seed: int = 0) -> DevPool:
    """Every dev positive and mined negative, then up to ``distractors`` passages of ``corpus``
    (``doc_id`` and ``text``, a seeded sample; all of it when smaller).

    The dev lists alone are a small pool (a few hundred passages, dev MRR@10 near 0.9 for a
    good base model), which leaves a gain little room above the base and ranks nothing the way
    the benchmark does. With the corpus in the pool a dev query meets what a search meets: the
    other passages, training positives included.

    >>> dev = _Batchable(["q"], ["a"], ["A"], [3.0], [["b"]], [["B"]], [[0.0]])
    >>> pool = dev_pool(dev, pl.DataFrame({"doc_id": ["a", "c", "d"], "text": ["A", "C", "D"]}), distractors=5)
    >>> sorted(pool.ids), len(pool.texts)
    (['a', 'b', 'c', 'd'], 4)
    """
    ids: dict[str, int] = {}
    texts: list[str] = []

    def add(doc_id: str, text: str) -> None:
        if doc_id not in ids:
            ids[doc_id] = len(texts)
            texts.append(text)

    for i in range(len(dev)):
        for d, t in zip([dev.positive_ids[i], *dev.negative_ids[i]], [dev.positive_texts[i], *dev.negative_texts[i]], strict=True):
            add(d, t)
    if corpus is not None and distractors > 0 and corpus.height:
        rows = corpus.select(pl.col("doc_id").cast(pl.String), "text").sort("doc_id")
        if rows.height > distractors:
            rows = rows.sample(distractors, seed=seed)
        for d, t in rows.iter_rows():
            add(d, t)
    return DevPool(ids, texts)


def evaluate_dev(model, dev: _Batchable, pool: DevPool | None = None, batch_size: int = 128, max_length: int | None = None) -> dict:
    """MRR@10 and recall@1/10 of each dev query's positive among the ``pool`` passages
    (default: every dev positive and mined negative, :func:`dev_pool`).

    Texts are encoded as search encodes them (:func:`retriever_forge.encoding.encode_with_model`),
    at ``max_length`` tokens (the published model's length; None: the model's current one).
    Training truncates to its own, shorter length; scoring dev at that length measured a
    different model than search serves (on the demo a step was -0.009 MRR@10 at 128 tokens and
    +0.009 at 256).
    """
    pool = pool or dev_pool(dev)
    pool_ids, pool_texts = pool.ids, pool.texts
    was_training, training_length = model.training, model.max_seq_length
    model.max_seq_length = max_length or training_length
    try:
        q = torch.from_numpy(encode_with_model(model, dev.queries, batch_size=batch_size, show_progress=False))
        p = torch.from_numpy(encode_with_model(model, pool_texts, batch_size=batch_size, show_progress=False))
    finally:
        model.max_seq_length = training_length
        model.train(was_training)
    scores = q @ p.T
    target = torch.tensor([pool_ids[d] for d in dev.positive_ids])
    pos_score = scores[torch.arange(len(target)), target]
    rank = (scores > pos_score[:, None]).sum(1) + 1  # ties count in the positive's favour
    rr = torch.where(rank <= 10, 1.0 / rank.float(), torch.zeros_like(pos_score))
    return {
        "per_query_rr": [round(float(x), 6) for x in rr],
        "mrr@10": round(float(rr.mean()), 6),
        "recall@1": round(float((rank <= 1).float().mean()), 6),
        "recall@10": round(float((rank <= 10).float().mean()), 6),
        "dev_queries": len(dev),
        "pool": len(pool_texts),
    }


def dev_gain_over_base(rr: list[float], base_rr: list[float]) -> dict:
    """Paired dev gain over the base model: mean per-query reciprocal-rank difference, its
    standard error and their ratio ``gain_z`` (the publication guard's test statistic).

    >>> dev_gain_over_base([1.0, 1.0, 0.5, 1.0], [0.5, 1.0, 0.5, 0.5])
    {'gain': 0.25, 'gain_se': 0.144338, 'gain_z': 1.732}
    """
    diff = np.asarray(rr, dtype=np.float64) - np.asarray(base_rr, dtype=np.float64)
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    gain = float(diff.mean()) if len(diff) else 0.0
    z = gain / se if se > 0 else (math.inf if gain > 0 else 0.0)
    return {"gain": round(gain, 6), "gain_se": round(se, 6), "gain_z": round(z, 3) if math.isfinite(z) else 1e9}


def loss_trend(losses: list[float], min_steps: int = 50) -> dict:
    """Mean loss of the first and last fifth of training; ``decreasing`` when the last is lower.

    With fewer than ``min_steps`` steps the per-batch noise of a pre-trained encoder's small loss
    swamps any trend, so the check passes and says so.

    >>> loss_trend([2.0] * 25 + [1.0] * 25)
    {'decreasing': True, 'steps': 50, 'first': 2.0, 'last': 1.0, 'note': None}
    """
    if len(losses) < min_steps:
        return {"decreasing": True, "steps": len(losses), "first": None, "last": None, "note": f"fewer than {min_steps} steps"}
    k = max(1, len(losses) // 5)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    return {"decreasing": last < first, "steps": len(losses), "first": round(first, 5), "last": round(last, 5), "note": None}


# --------------------------------------------------------------------------------------------
# The training loop.


@dataclass
class LoopState:
    """Where a run stands: what a checkpoint's ``state.json`` holds and a resumed run goes on from.

    ``step`` counts optimiser steps so far and ``epoch``/``batch_in_epoch`` point at the next
    batch of the plan. ``best_step`` is the step whose weights the dev evaluations prefer (0:
    the base model's), ``best_metric`` its dev MRR@10, and ``base_rr`` the base model's
    per-query reciprocal ranks, the reference of the publication guard. ``stop_reason`` is set
    when the loop ends (see :attr:`TrainingResult.stop_reason`); ``seconds`` is the training
    time up to the last checkpoint.
    """

    fingerprint: str
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: list[dict] = field(default_factory=list)  # per step: step, epoch, loss, lr
    dev_metrics: list[dict] = field(default_factory=list)  # per evaluation: step, mrr@10, ...
    best_metric: float | None = None
    best_step: int = 0
    evals_without_improvement: int = 0
    examples_seen: int = 0
    stop_reason: str | None = None
    seconds: float = 0.0
    base_rr: list[float] | None = None


def start_or_resume(ckpt_root: Path, fingerprint: str, model, optimizer, scheduler, resume: bool) -> tuple[LoopState, Path | None]:
    """The loop state to go on from, and the checkpoint it was loaded from (None: a fresh start).

    With ``resume``, the latest checkpoint under ``ckpt_root`` saved with this ``fingerprint``
    (the same base model, examples, config and precision) is loaded into ``model``,
    ``optimizer``, ``scheduler`` and the RNG. Otherwise, or when none matches, ``ckpt_root``
    is emptied and training starts at step 0.
    """
    if resume and ckpt_root.exists():
        matching = [path for _, path in list_checkpoints(ckpt_root) if read_state(path).get("fingerprint") == fingerprint]
        if matching:
            state = LoopState(**load_checkpoint(matching[-1], model, optimizer, scheduler))
            log.info("resumed training from %s", matching[-1])
            return state, matching[-1]
    shutil.rmtree(ckpt_root, ignore_errors=True)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    return LoopState(fingerprint=fingerprint), None


def next_batch(state: LoopState, plan: list[list[list[int]]], total_steps: int) -> list[int] | None:
    """Advance ``state`` by one step and return that step's batch of ``plan``; None once
    ``total_steps`` are done.

    >>> state, plan = LoopState(fingerprint="f"), [[[0, 1], [2, 3]], [[3, 0]]]
    >>> [next_batch(state, plan, total_steps=3) for _ in range(4)]
    [[0, 1], [2, 3], [3, 0], None]
    >>> state.step, state.epoch, state.batch_in_epoch
    (3, 1, 1)
    """
    while state.step < total_steps:
        if state.batch_in_epoch < len(plan[state.epoch]):
            batch = plan[state.epoch][state.batch_in_epoch]
            state.step += 1
            state.batch_in_epoch += 1
            return batch
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    return None


def train_step(
    model,
    optimizer,
    scheduler,
    train: _Batchable,
    batch: list[int],
    cfg: TrainingConfig,
    device: str,
    grad_sync: Callable[[torch.nn.Module], None] | None = None,
) -> float:
    """One optimiser step on ``batch``; returns the batch's loss.

    The loss runs under bf16 autocast where bf16 is native; then backward, ``grad_sync``
    (data-parallel gradient averaging), clipping to ``cfg.max_grad_norm``, AdamW and the
    schedule. A non-finite loss is returned before the backward pass, with the weights,
    optimizer and schedule untouched.
    """
    with _autocast(cfg, device):
        loss = compute_batch_loss(model, train, batch, cfg)
    loss_value = float(loss.detach())
    if not math.isfinite(loss_value):
        return loss_value
    loss.backward()
    if grad_sync is not None:  # data-parallel: average gradients across processes (train_cli)
        grad_sync(model)
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_value


def evaluate_and_keep_best(
    model,
    dev: _Batchable,
    state: LoopState,
    cfg: TrainingConfig,
    ckpt_root: Path,
    pool: DevPool | None = None,
    max_length: int | None = None,
) -> dict:
    """Evaluate the current weights on ``dev`` and do the publication guard's bookkeeping.

    Step 0's evaluation is the base model's, the reference of every later step's paired gain
    (``gain``, ``gain_se``, ``gain_z``). A step becomes ``state.best_step``, its weights saved
    beside the checkpoints, when its MRR@10 beats the best so far and its gain is more than
    ``cfg.min_dev_gain_z`` standard errors; otherwise ``evals_without_improvement`` (early
    stopping's count) grows. Returns the evaluation's metrics, also appended to
    ``state.dev_metrics``. ``max_length``: the tokens dev texts are encoded at (:func:`evaluate_dev`).
    """
    metrics = {"step": state.step, **evaluate_dev(model, dev, pool, max_length=max_length)}
    rr = metrics.pop("per_query_rr")
    if state.step == 0:
        state.base_rr = rr
    elif state.base_rr is not None:
        metrics.update(dev_gain_over_base(rr, state.base_rr))
    state.dev_metrics.append(metrics)
    score = metrics["mrr@10"]
    beyond_noise = state.step == 0 or metrics.get("gain_z") is None or metrics["gain_z"] > cfg.min_dev_gain_z
    if (state.best_metric is None or score > state.best_metric) and beyond_noise:
        state.best_metric, state.best_step = score, state.step
        state.evals_without_improvement = 0
        if state.step > 0:  # step 0's weights are the base model's: nothing to save
            save_weights(model, best_weights_path(ckpt_root, state.step))
    else:
        state.evals_without_improvement += 1
    log.info("dev at step %d: %s", state.step, metrics)
    return metrics


def restore_best(model, state: LoopState, ckpt_root: Path, base_path: str, device: str) -> tuple[object, bool]:
    """The model with ``state.best_step``'s weights, and whether those are the base model's.

    When the best step is the last one the model is returned as it is; when it is step 0 the
    base model is opened afresh (without the adapter training attached).
    """
    if state.best_step == state.step:
        return model, False
    if state.best_step == 0:
        return open_sentence_transformer(base_path, device=device), True
    load_weights(model, best_weights_path(ckpt_root, state.best_step))
    return model, False


def _param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Biases and LayerNorm weights are not regularised (standard BERT fine-tuning), nor are
        # sparsely tuned matrices (decay would move the positions their gradient mask freezes).
        skip = p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name or hasattr(p, "sparse_tuning_mask")
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _uses_bf16(cfg: TrainingConfig, device: str) -> bool:
    return cfg.bf16 and bf16_is_native(device)


def _autocast(cfg: TrainingConfig, device: str) -> torch.autocast:
    return torch.autocast(device_type=autocast_device_type(device), dtype=torch.bfloat16, enabled=_uses_bf16(cfg, device))


def _sensitivity_loss(model, train: _Batchable, plan: list[list[list[int]]], cfg: TrainingConfig, device: str, i: int) -> torch.Tensor:
    """The loss of the i-th batch of the first epoch (SPT measures sensitivity on it)."""
    with _autocast(cfg, device):
        return compute_batch_loss(model, train, plan[0][i % len(plan[0])], cfg)


def train_encoder(
    base_model: str,
    examples: pl.DataFrame,
    output_dir: Path,
    config: TrainingConfig | None = None,
    progress: Callable[[dict], None] | None = None,
    resume: bool = True,
    grad_sync: Callable[[torch.nn.Module], None] | None = None,
    dev_corpus: pl.DataFrame | None = None,
) -> TrainingResult:
    """Fine-tune ``base_model`` on ``TRAINING_EXAMPLES`` rows; the model lands in
    ``output_dir/model`` as a sentence-transformers folder (safetensors + tokenizer).

    Rows with ``split == "train"`` are trained on, ``split == "dev"`` ones evaluated: each dev
    query's positive is ranked among the dev lists and, given ``dev_corpus`` (``doc_id`` and
    the encoder's ``text``), ``cfg.dev_distractors`` of its passages (:func:`dev_pool`). With
    ``resume`` the latest checkpoint under ``output_dir/checkpoints`` made with the same
    model, examples and config is continued; otherwise (or when none matches) training
    starts over. ``progress`` is called after every step with a dict (step, total_steps,
    epoch, loss, lr, and dev metrics when an evaluation ran). ``grad_sync`` is called with the
    model after each backward pass (before clipping), e.g. to all-reduce gradients across
    data-parallel processes (:mod:`retriever_forge.orchestration.train_cli`).
    """
    from transformers import get_linear_schedule_with_warmup

    cfg = config or TrainingConfig()
    started = time.monotonic()
    output_dir = Path(output_dir)
    ckpt_root = output_dir / "checkpoints"
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = "bfloat16-autocast" if _uses_bf16(cfg, device) else "float32"

    torch.manual_seed(cfg.seed)
    base_path = resolve_model_path(base_model)
    base_identity = model_folder_hash(base_path) if Path(base_path).exists() else base_path
    model = open_sentence_transformer(base_path, device=device)
    # Training truncates to cfg.max_seq_length (activation memory grows with length^2); the saved
    # model keeps the base model's own length, so search encodes whole passages as before.
    serving_max_length = model.max_seq_length
    model.max_seq_length = cfg.max_seq_length
    query_prefix = configure_encoder(model, cfg)

    train_df = examples.filter(pl.col("split") == "train")
    dev_df = examples.filter(pl.col("split") == "dev").head(cfg.max_dev_queries)
    train = _Batchable.from_frame(train_df, cfg.negatives_per_example)
    dev = _Batchable.from_frame(dev_df, cfg.negatives_per_example) if dev_df.height else None
    if len(train) == 0:
        raise ValueError("no training examples with split == 'train'")
    for part in (train, dev):
        if part is not None and query_prefix:
            part.queries = [query_prefix + q for q in part.queries]

    pool = dev_pool(dev, dev_corpus, cfg.dev_distractors, cfg.seed) if dev is not None else None
    fingerprint = hash_json(
        {"base": base_identity, "examples": _frame_digest(examples), "config": cfg.fingerprint_fields(), "precision": precision,
         **({"dev_pool": hash_json(sorted(pool.ids))} if pool is not None and dev_corpus is not None else {})}
    )  # fmt: skip
    plan = _plan_batches(train, cfg, model)
    planned_steps = sum(len(p) for p in plan)
    total_steps = planned_steps if cfg.max_steps is None else min(planned_steps, cfg.max_steps)

    adapter = attach_adapter(model, cfg.adapter_settings(), functools.partial(_sensitivity_loss, model, train, plan, cfg, device))
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), max(1, total_steps))

    state, last_checkpoint = start_or_resume(ckpt_root, fingerprint, model, optimizer, scheduler, resume)
    resumed_from = state.step if last_checkpoint is not None else None
    seconds_before = state.seconds
    if dev is not None and cfg.eval_at_start and state.step == 0 and not state.dev_metrics:
        evaluate_and_keep_best(model, dev, state, cfg, ckpt_root, pool, serving_max_length)

    model.train()
    while state.stop_reason is None:
        batch = next_batch(state, plan, total_steps)
        if batch is None:
            state.stop_reason = "max_steps" if total_steps < planned_steps else "completed"
            break
        step, epoch = state.step, state.epoch
        loss = train_step(model, optimizer, scheduler, train, batch, cfg, device, grad_sync)
        if not math.isfinite(loss):
            raise TrainingDiverged(step, loss, last_checkpoint)
        record = {"step": step, "epoch": epoch, "loss": round(loss, 6), "lr": scheduler.get_last_lr()[0]}
        state.history.append(record)
        state.examples_seen += len(batch)

        end_of_epoch = state.batch_in_epoch == len(plan[epoch])
        last_step = step == total_steps
        event = {**record, "total_steps": total_steps}
        if cfg.time_budget_s is not None and seconds_before + time.monotonic() - started > cfg.time_budget_s and not last_step:
            state.stop_reason = "time_budget"
        if dev is not None and (_due(step, cfg.eval_every_steps, end_of_epoch) or last_step or state.stop_reason):
            event["dev"] = evaluate_and_keep_best(model, dev, state, cfg, ckpt_root, pool, serving_max_length)
            patience = cfg.early_stopping_patience
            if patience and state.evals_without_improvement >= patience and state.stop_reason is None:
                state.stop_reason = "early_stopping"
        if _due(step, cfg.checkpoint_every_steps, end_of_epoch) or last_step or state.stop_reason:
            state.seconds = seconds_before + time.monotonic() - started
            last_checkpoint = save_checkpoint(ckpt_root, step, model, optimizer, scheduler, asdict(state), cfg.keep_checkpoints)
        if progress is not None:
            progress(event)

    model, published_base = restore_best(model, state, ckpt_root, base_path, device) if dev is not None else (model, False)
    model_dir = output_dir / "model"
    adapter_summary = _save_model(model, adapter, output_dir, model_dir, base_identity, published_base, serving_max_length)
    result = TrainingResult(
        model_dir=model_dir,
        weights_hash=model_folder_hash(model_dir),
        history=state.history,
        dev_metrics=state.dev_metrics,
        best_step=state.best_step,
        stopped_early=state.stop_reason in ("early_stopping", "time_budget"),
        device=device,
        precision=precision,
        examples_seen=state.examples_seen,
        seconds=round(seconds_before + time.monotonic() - started, 3),
        stop_reason=state.stop_reason,
        resumed_from_step=resumed_from,
        trainable_parameters=adapter.trainable_parameters,
        adapter=adapter_summary,
    )
    (output_dir / "training_result.json").write_text(json.dumps(result.to_json(), indent=1))
    return result


def _save_model(
    model, adapter, output_dir: Path, model_dir: Path, base_identity: str, published_base: bool, serving_max_length: int
) -> dict | None:
    """Save the published model to ``model_dir`` (an adapter merged in, and exported beside it
    under ``adapter/``); returns the adapter's summary (None: full fine-tuning)."""
    shutil.rmtree(model_dir, ignore_errors=True)
    adapter_summary = None
    adapter_export = output_dir / "adapter"
    shutil.rmtree(adapter_export, ignore_errors=True)
    if adapter.kind != "none":
        adapter_summary = adapter.summary()
        if published_base:
            adapter_summary["published"] = "no step beat the base model on the dev queries: base weights published"
        else:  # the adapter beside the merged model, with the base model's identity
            adapter_summary = export_and_merge(model, adapter, adapter_export, base_identity)
    _reset_tokenizer_runtime_state(model)
    model.max_seq_length = serving_max_length
    model.save(str(model_dir), safe_serialization=True)
    if adapter_export.exists():
        shutil.copytree(adapter_export, model_dir / "adapter")
    return adapter_summary


def configure_encoder(model, cfg: TrainingConfig) -> str:
    """Set the pooling head, attention mask, gradient checkpointing and query prompt that
    ``cfg`` asks for on a freshly loaded model; returns the prefix every query gets.

    The query prefix is saved as the model's ``"query"`` prompt, which
    :func:`retriever_forge.encoding.encode_queries` applies at search time.
    """
    from retriever_forge import decoder, pooling

    hf = model[0].auto_model
    if decoder.is_decoder(hf):
        decoder.prepare_tokenizer(model)
        decoder.use_plain_text(model)
    if cfg.bidirectional:
        decoder.add_bidirectional_module(model)
    pooling.set_pooling(model, cfg.pooling, latents=cfg.latent_attention_latents, latent_heads=cfg.latent_attention_heads)
    if cfg.gradient_checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.query_instruction is not None:
        model.prompts = {**(model.prompts or {}), "query": cfg.query_instruction}
    return (model.prompts or {}).get("query", "")


def _reset_tokenizer_runtime_state(model) -> None:
    """Clear the fast tokenizer's last-call padding/truncation before saving.

    ``tokenizer.json`` serialises whatever padding and truncation the *last* call used, so
    without this the saved folder (and its content hash) depends on which batch ran last — a
    resumed run would write a new artifact for identical weights.
    """
    backend = getattr(getattr(model, "tokenizer", None), "backend_tokenizer", None)
    if backend is not None:
        backend.no_padding()
        backend.no_truncation()


def _due(step: int, every: int, end_of_epoch: bool) -> bool:
    return (every > 0 and step % every == 0) or (every <= 0 and end_of_epoch)
