"""Parameter-efficient fine-tuning of an encoder's backbone: LoRA and SPT.

* ``lora`` (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): each
  target ``nn.Linear`` gets a trainable low-rank update ``B A`` (``B`` starts at zero, so the
  model starts exactly at the base), through ``peft``; every backbone weight is frozen.
* ``spt`` (He et al., ICCV 2023, "Sensitivity-Aware Visual Parameter-Efficient Fine-Tuning"):
  the first-order Taylor sensitivity ``|g * w|`` of every weight of the target matrices is
  summed over a few training batches; the ``tunable_parameter_budget`` most sensitive
  positions are chosen; a matrix holding more chosen positions than ``spt_structured_threshold``
  gets a structured adapter (LoRA at ``lora_rank``) and the others are tuned sparsely — only the
  chosen positions change, through a gradient mask (and no weight decay on those matrices).
  The default threshold is the matrix's LoRA cost ``(d_in + d_out) * r``: LoRA replaces the
  sparse positions only where it costs no more than them, so SPT stays within its budget.

Target modules default to every ``nn.Linear`` of the backbone's layers — the attention and MLP
projections of any architecture (BERT's ``query/key/value/dense``, Llama's
``q/k/v/o/gate/up/down_proj``) — except poolers and output heads.

After training, :func:`export_and_merge` writes the adapter (``adapter/``: peft's
``adapter_model.safetensors`` + ``adapter_config.json``, SPT's sparse deltas and positions as
safetensors, and ``adapter_manifest.json`` with the base model's hash) and merges it into the
weights, so the published folder is a plain sentence-transformers model.

Example (needs a model, so not a doctest)::

    state = attach_adapter(st_model, AdapterSettings(kind="lora", lora_rank=8))
    ...train...
    export_and_merge(st_model, state, out_dir / "adapter", base_hash)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

ADAPTER_KINDS = ("none", "lora", "spt")
# Linear layers that are heads or poolers, not projections of the transformer's layers.
_NOT_TARGETS = ("pooler", "lm_head", "classifier", "score", "embed_out", "qa_outputs")


@dataclass
class AdapterSettings:
    kind: str = "none"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None  # None: every projection Linear of the backbone
    tunable_parameter_budget: float = 0  # SPT: count, a fraction (<1) of the targets, or 0: LoRA's count
    spt_sensitivity_batches: int = 4
    spt_structured_threshold: int = 0  # 0: the matrix's LoRA cost (d_in + d_out) * rank

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ValueError(f"unknown adapter {self.kind!r}; expected one of {ADAPTER_KINDS}")
        if self.kind != "none" and self.lora_rank < 1:
            raise ValueError("lora_rank must be >= 1")


@dataclass
class AdapterState:
    """What :func:`attach_adapter` did, for the manifest and :func:`export_and_merge`."""

    kind: str
    lora_modules: list[str] = field(default_factory=list)
    sparse_modules: dict[str, int] = field(default_factory=dict)  # module -> tuned positions
    budget: int = 0
    trainable_parameters: int = 0
    total_parameters: int = 0
    # Not in the summary: the masks and the base values at the masked positions.
    masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    base_values: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("masks")
        d.pop("base_values")
        return d


def backbone(st_model) -> nn.Module:
    """The Hugging Face model inside a sentence-transformers model's first module."""
    return st_model[0].auto_model


def projection_modules(model: nn.Module, names: Iterable[str] | None = None) -> list[str]:
    """Qualified names of the Linear layers to adapt.

    ``names`` selects by the last name part (``["query", "value"]``, ``["q_proj"]``), as peft
    does; ``None`` takes every Linear inside the transformer layers except heads and poolers.
    """
    wanted = set(names) if names else None
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        parts = name.split(".")
        if wanted is not None:
            if parts[-1] in wanted or name in wanted:
                found.append(name)
        elif not any(p in _NOT_TARGETS for p in parts):
            found.append(name)
    if not found:
        raise ValueError(f"no Linear layers match target_modules={names!r} in {type(model).__name__}")
    return found


def lora_cost(linear: nn.Linear, rank: int) -> int:
    return rank * (linear.in_features + linear.out_features)


def trainable_parameters(model: nn.Module) -> int:
    n = sum(p.numel() for p in model.parameters() if p.requires_grad and not hasattr(p, "sparse_tuning_mask"))
    return n + sum(int(p.sparse_tuning_mask.sum()) for p in model.parameters() if p.requires_grad and hasattr(p, "sparse_tuning_mask"))


def _inject_lora(model: nn.Module, modules: list[str], s: AdapterSettings) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=s.lora_rank, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout, target_modules=modules, bias="none")
    inject_adapter_in_model(config, model)
    model._retriever_forge_lora_config = config


def attach_adapter(
    st_model,
    settings: AdapterSettings,
    sensitivity_loss: Callable[[int], torch.Tensor] | None = None,
) -> AdapterState:
    """Freeze the backbone and make only the adapter trainable; returns what was chosen.

    ``sensitivity_loss(i)`` computes the training loss of the i-th sensitivity batch (SPT only).
    Modules after the backbone (a trainable pooling head) stay trainable.
    """
    model = backbone(st_model)
    state = AdapterState(kind=settings.kind, settings=asdict(settings))
    state.total_parameters = sum(p.numel() for p in st_model.parameters())
    if settings.kind == "none":
        state.trainable_parameters = trainable_parameters(st_model)
        return state
    targets = projection_modules(model, settings.target_modules)
    linears = {name: model.get_submodule(name) for name in targets}
    lora_total = sum(lora_cost(m, settings.lora_rank) for m in linears.values())
    if settings.kind == "lora":
        lora, sparse = targets, {}
        state.budget = lora_total
    else:
        if sensitivity_loss is None:
            raise ValueError("SPT needs training batches to measure sensitivity")
        scores = spt_sensitivity(st_model, linears, sensitivity_loss, settings.spt_sensitivity_batches)
        state.budget = _budget(settings.tunable_parameter_budget, lora_total, sum(m.weight.numel() for m in linears.values()))
        lora, sparse = spt_allocate(scores, linears, state.budget, settings.lora_rank, settings.spt_structured_threshold)
    for p in model.parameters():
        p.requires_grad_(False)
    if lora:
        _inject_lora(model, lora, settings)
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
    for name, mask in sparse.items():
        weight = linears[name].weight
        weight.requires_grad_(True)
        weight.sparse_tuning_mask = mask  # read by trainable_parameters and the optimizer's groups
        weight.register_hook(lambda g, m=mask: g * m.to(g.dtype))
        state.masks[name] = mask
        state.base_values[name] = weight.detach()[mask].clone()
    state.lora_modules = list(lora)
    state.sparse_modules = {name: int(mask.sum()) for name, mask in sparse.items()}
    state.trainable_parameters = trainable_parameters(st_model)
    log.info("adapter %s: %d of %d parameters trainable (%d LoRA matrices, %d sparse)", settings.kind,
             state.trainable_parameters, state.total_parameters, len(lora), len(sparse))  # fmt: skip
    return state


def _budget(requested: float, lora_total: int, target_total: int) -> int:
    if requested <= 0:
        return lora_total  # the same count as LoRA on every target: a like-for-like comparison
    if requested < 1:
        return max(1, int(requested * target_total))
    return int(requested)


def spt_sensitivity(
    st_model, linears: dict[str, nn.Linear], loss_of_batch: Callable[[int], torch.Tensor], n_batches: int
) -> dict[str, torch.Tensor]:
    """``sum over batches |dL/dw * w|`` for every weight of ``linears`` (SPT's first-order Taylor
    estimate of how much the loss changes if that weight moves), on the model as loaded."""
    scores = {name: torch.zeros_like(m.weight, dtype=torch.float32) for name, m in linears.items()}
    was = {name: m.weight.requires_grad for name, m in linears.items()}
    for m in linears.values():
        m.weight.requires_grad_(True)
    for i in range(max(1, n_batches)):
        st_model.zero_grad(set_to_none=True)
        loss = loss_of_batch(i)
        loss.backward()
        for name, m in linears.items():
            if m.weight.grad is not None:
                scores[name] += (m.weight.grad.float() * m.weight.detach().float()).abs()
    st_model.zero_grad(set_to_none=True)
    for name, m in linears.items():
        m.weight.requires_grad_(was[name])
    return scores


def spt_allocate(
    scores: dict[str, torch.Tensor], linears: dict[str, nn.Linear], budget: int, rank: int, threshold: int = 0
) -> tuple[list[str], dict[str, torch.Tensor]]:
    """SPT's allocation: the ``budget`` top-sensitivity positions over all matrices; matrices with
    more than their threshold of them get LoRA, the rest a boolean mask of their positions."""
    names = list(scores)
    flat = torch.cat([scores[n].flatten() for n in names])
    budget = min(budget, flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.topk(flat, budget, sorted=False).indices] = True
    lora, sparse, offset = [], {}, 0
    for n in names:
        size = scores[n].numel()
        mask = chosen[offset : offset + size].view_as(scores[n])
        offset += size
        count = int(mask.sum())
        if count == 0:
            continue
        limit = threshold or lora_cost(linears[n], rank)
        if count > limit:
            lora.append(n)
        else:
            sparse[n] = mask.to(linears[n].weight.device)
    return lora, sparse


def export_and_merge(st_model, state: AdapterState, adapter_dir: Path, base_model_hash: str) -> dict:
    """Write the adapter beside the model, merge it into the weights, and return its manifest.

    Called once, after the best weights are loaded. The LoRA part is peft's own format
    (``peft.PeftModel.from_pretrained(base, adapter_dir)`` loads it); SPT's sparse part is
    ``sparse_deltas.safetensors``: for each matrix ``<name>.index`` (flat positions) and
    ``<name>.delta`` (new minus base value).
    """
    from safetensors.torch import save_file

    model = backbone(st_model)
    adapter_dir = Path(adapter_dir)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    files = []
    if state.lora_modules:
        from peft import get_peft_model_state_dict

        config = model._retriever_forge_lora_config
        config.base_model_name_or_path = None
        # peft holds target_modules as a set and writes it in iteration order, which follows str
        # hashing (PYTHONHASHSEED); sorted, adapter_config.json (and the folder's hash) repeats.
        config.target_modules = sorted(config.target_modules)
        weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
        save_file(weights, str(adapter_dir / "adapter_model.safetensors"))
        config.save_pretrained(str(adapter_dir))
        files += ["adapter_model.safetensors", "adapter_config.json"]
    if state.masks:
        tensors = {}
        for name, mask in state.masks.items():
            weight = model.get_submodule(name).weight.detach()
            tensors[f"{name}.index"] = torch.nonzero(mask.flatten()).flatten().cpu()
            tensors[f"{name}.delta"] = (weight[mask] - state.base_values[name]).float().cpu()
        save_file(tensors, str(adapter_dir / "sparse_deltas.safetensors"))
        files.append("sparse_deltas.safetensors")
        for name in state.masks:
            del model.get_submodule(name).weight.sparse_tuning_mask
    merge_lora(model)
    manifest = {**state.summary(), "base_model_hash": base_model_hash, "files": files, "merged": True}
    (adapter_dir / "adapter_manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def merge_lora(model: nn.Module) -> None:
    """Fold every peft LoRA layer into its base Linear and put the plain Linear back."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and name:
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    if hasattr(model, "_retriever_forge_lora_config"):
        del model._retriever_forge_lora_config
