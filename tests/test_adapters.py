"""Adapters (LoRA, SPT) on tiny random models: targets, training only the adapter, merging, and
trained weights that do not depend on the process's string hashing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from retriever_forge import adapters
from retriever_forge.encoding import model_folder_hash
from retriever_forge.training import TrainingConfig, train_encoder
from tests.test_encoders import _contrastive_loss, _examples, _st, _train_steps, _vectors

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]


def _base_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in adapters.backbone(model).state_dict().items()}


def test_projection_modules_resolve_per_architecture(tiny, tiny_decoder):
    bert = adapters.projection_modules(adapters.backbone(_st(tiny)))
    assert {n.split(".")[-1] for n in bert} == {"query", "key", "value", "dense"} and not any("pooler" in n for n in bert)
    llama = adapters.projection_modules(adapters.backbone(_st(tiny_decoder)))
    assert {n.split(".")[-1] for n in llama} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert adapters.projection_modules(adapters.backbone(_st(tiny)), ["query"]) == ["encoder.layer.0.attention.self.query",
                                                                                     "encoder.layer.1.attention.self.query"]  # fmt: skip
    with pytest.raises(ValueError, match="no Linear layers match"):
        adapters.projection_modules(adapters.backbone(_st(tiny)), ["q_proj"])


def test_lora_changes_only_adapter_weights_and_merges_to_same_outputs(tiny, tmp_path):
    torch.manual_seed(0)
    model = _st(tiny)
    base = _base_state(model)
    state = adapters.attach_adapter(model, adapters.AdapterSettings(kind="lora", lora_rank=4, lora_dropout=0.0))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert state.trainable_parameters == sum(p.numel() for p in model.parameters() if p.requires_grad) == state.budget
    _train_steps(model)
    unmerged = _vectors(model)
    for name, p in adapters.backbone(model).named_parameters():
        if "lora_" not in name:  # every base weight is untouched
            assert torch.equal(p.detach(), base[name.replace(".base_layer", "")]), name
    manifest = adapters.export_and_merge(model, state, tmp_path / "adapter", base_model_hash="abc")
    merged = _vectors(model)
    np.testing.assert_allclose(merged, unmerged, atol=1e-5)
    assert not np.allclose(merged, _vectors(_st(tiny)), atol=1e-4)  # training moved the vectors
    assert set(adapters.backbone(model).state_dict()) == set(base)  # plain modules again
    assert manifest["base_model_hash"] == "abc" and (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4


def test_spt_allocation_is_top_budget_with_lora_where_dense():
    lin_a, lin_b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)  # LoRA cost at rank 1: 8
    scores = {"a": torch.arange(16.0).view(4, 4) + 100, "b": torch.arange(16.0).view(4, 4)}
    lora, sparse = adapters.spt_allocate(scores, {"a": lin_a, "b": lin_b}, budget=12, rank=1)
    # The 12 top scores: all 16 of "a" beat "b", so 12 positions of "a" (> 8: LoRA), none of "b".
    assert lora == ["a"] and sparse == {}
    lora, sparse = adapters.spt_allocate(scores, {"a": lin_a, "b": lin_b}, budget=20, rank=1, threshold=100)
    assert lora == [] and int(sparse["a"].sum()) == 16 and int(sparse["b"].sum()) == 4
    assert sparse["b"].flatten().nonzero().flatten().tolist() == [12, 13, 14, 15]


def test_spt_tunes_only_chosen_positions_and_merges(tiny, tmp_path):
    torch.manual_seed(0)
    model = _st(tiny)
    base = _base_state(model)
    # A budget and threshold that give both kinds: matrices over 60 sensitive positions get LoRA.
    settings = adapters.AdapterSettings(kind="spt", lora_rank=2, lora_dropout=0.0, tunable_parameter_budget=600,
                                        spt_sensitivity_batches=2, spt_structured_threshold=60)  # fmt: skip
    state = adapters.attach_adapter(model, settings, lambda i: _contrastive_loss(model))
    assert state.lora_modules and state.sparse_modules, state.summary()
    assert (
        sum(state.sparse_modules.values())
        + sum(adapters.lora_cost(adapters.backbone(model).get_submodule(n).base_layer, 2) for n in state.lora_modules)
        == state.trainable_parameters
    )
    default = adapters.attach_adapter(_st(tiny), adapters.AdapterSettings(kind="spt", lora_rank=2, tunable_parameter_budget=600),
                                      lambda i: torch.zeros((), requires_grad=True) + 0 * _contrastive_loss(model))  # fmt: skip
    assert default.trainable_parameters <= default.budget == 600  # the default threshold (LoRA's cost) keeps SPT in budget
    _train_steps(model)
    hf = adapters.backbone(model)
    for name, p in hf.named_parameters():
        key = name.replace(".base_layer", "")
        module = key.rsplit(".", 1)[0]
        if "lora_" in name:
            continue
        if module in state.masks and key.endswith("weight"):
            changed = p.detach() != base[key]
            assert changed.any() and not (changed & ~state.masks[module]).any(), name  # only chosen positions moved
        else:
            assert torch.equal(p.detach(), base[key]), name
    unmerged = _vectors(model)
    manifest = adapters.export_and_merge(model, state, tmp_path / "adapter", base_model_hash="h")
    np.testing.assert_allclose(_vectors(model), unmerged, atol=1e-5)
    assert manifest["sparse_modules"] == state.sparse_modules and manifest["budget"] == 600
    from safetensors.torch import load_file

    deltas = load_file(str(tmp_path / "adapter" / "sparse_deltas.safetensors"))
    name = next(iter(state.sparse_modules))
    assert deltas[f"{name}.index"].numel() == state.sparse_modules[name] == deltas[f"{name}.delta"].numel()


def test_train_encoder_with_lora_publishes_merged_folder_and_adapter(tiny, tmp_path):
    cfg = TrainingConfig(adapter="lora", lora_rank=4, learning_rate=5e-3, batch_size=4, max_seq_length=16, eval_at_start=False,
                         bf16=False, seed=1)  # fmt: skip
    result = train_encoder(tiny, _examples(), tmp_path / "out", cfg)
    assert result.adapter["kind"] == "lora" and result.trainable_parameters == result.adapter["trainable_parameters"] > 0
    folder = Path(result.model_dir)
    manifest = json.loads((folder / "adapter" / "adapter_manifest.json").read_text())
    assert manifest["base_model_hash"] == model_folder_hash(tiny)
    from sentence_transformers import SentenceTransformer

    plain = SentenceTransformer(str(folder), device="cpu")  # no retriever_forge module: loads anywhere
    assert not any("lora" in k for k in plain.state_dict())
    assert not np.allclose(_vectors(plain), _vectors(_st(tiny)), atol=1e-4)


# A LoRA and an SPT run in a fresh interpreter; prints each published file's sha256.
_TRAIN_LORA_AND_SPT = textwrap.dedent("""
    import hashlib, json, sys
    from pathlib import Path

    import torch

    from retriever_forge.training import TrainingConfig, train_encoder
    from tests.test_encoders import _examples

    torch.set_num_threads(1)
    tiny, out = sys.argv[1], Path(sys.argv[2])
    files = {}
    for kind in ("lora", "spt"):
        cfg = TrainingConfig(adapter=kind, lora_rank=2, spt_sensitivity_batches=2, learning_rate=5e-3, batch_size=4,
                             max_seq_length=16, epochs=1, eval_at_start=False, bf16=False, seed=1)
        folder = Path(train_encoder(tiny, _examples(12), out / kind, cfg).model_dir)
        files[kind] = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                       for p in sorted(folder.rglob("*")) if p.is_file()}
    print(json.dumps(files))
""")


def _published_files(tiny: str, out: Path, hash_seed: str) -> dict[str, dict[str, str]]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _TRAIN_LORA_AND_SPT, tiny, str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_lora_and_spt_weights_do_not_depend_on_string_hashing(tiny, tmp_path):
    # peft keeps target_modules as a set of str, whose order follows PYTHONHASHSEED; these two
    # seeds order the modules of both runs differently, so anything that leaks that order into
    # the published folder (adapter_config.json, or the weights) shows up as a differing file.
    first, second = (_published_files(tiny, tmp_path / seed, seed) for seed in ("1", "2"))
    assert "adapter/adapter_config.json" in first["lora"] and "adapter/adapter_config.json" in first["spt"]
    assert "adapter/sparse_deltas.safetensors" in first["spt"]
    for kind in ("lora", "spt"):
        differing = sorted(f for f in first[kind].keys() | second[kind].keys() if first[kind].get(f) != second[kind].get(f))
        assert not differing, f"{kind}: {differing}"
