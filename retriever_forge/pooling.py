"""Pooling heads for encoders: the model's own, mean, CLS, last token, GeM, GGeM, NV-Embed's latent attention.

``mean``, ``cls`` and ``last`` are sentence-transformers' own ``Pooling`` (its last-token mode
finds each row's last real token from the attention mask, so left and right padding both
work), so such a folder loads anywhere. The learnable heads are sentence-transformers modules
defined here, saved as ``config.json`` + ``model.safetensors`` in their module folder (no
pickles, no code files); the folder's ``modules.json`` names ``retriever_forge.pooling.<Class>``,
so loading it needs this package installed and ``trust_remote_code=True``
(sentence-transformers >= 6 asks that flag for any class outside its own namespace; nothing is
fetched, the class is imported from the installed package):

    SentenceTransformer(folder, trust_remote_code=True)

* :class:`GeMPooling` — generalized mean ``(mean_t x_t^p)^(1/p)`` per channel with a learnable
  exponent (Radenović et al. 2018); ``groups > 1`` is GGeM (Ko et al. 2022, "Group Generalized
  Mean Pooling for Vision Transformer"): one exponent per group of channels, groups = the
  attention heads. Transformer token states are signed (GeM was made for post-ReLU maps), so
  the power is sign-preserving, ``sign(x)|x|^p``; with ``p = 1`` it is mean pooling.
* :class:`LatentAttentionPooling` — NV-Embed (Lee et al. 2024): the token states are queries of
  a multi-head cross-attention whose keys and values are a trainable latent array, followed by
  a GELU MLP and mean pooling over the real tokens. As NV-Embed's released code, both blocks
  are pre-norm and residual; their output projections start at zero, so training starts from
  the backbone's mean pooling rather than from a random vector.

Example:
    >>> import torch
    >>> gem = GeMPooling(embedding_dimension=2, p_init=1.0)
    >>> x = torch.tensor([[[1.0, -2.0], [3.0, 4.0]]])
    >>> gem({"token_embeddings": x, "attention_mask": torch.ones(1, 2)})["sentence_embedding"]
    tensor([[2., 1.]], grad_fn=<MulBackward0>)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from sentence_transformers.base.modules.module import Module
from torch import nn

POOLING_MODES = ("model", "mean", "cls", "last", "gem", "ggem", "latent_attention")
_ST_MODES = {"mean": "mean", "cls": "cls", "last": "lasttoken"}


def _mask(features: dict, x: torch.Tensor) -> torch.Tensor:
    mask = features.get("attention_mask")
    if mask is None or mask.shape[-1] != x.shape[1]:
        mask = torch.ones(x.shape[:2], device=x.device)
    return mask.to(x.dtype).unsqueeze(-1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class _SavedModule(Module):
    """Save/load as ``config.json`` + ``model.safetensors`` (sentence-transformers' Dense pattern)."""

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=True)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token=None, cache_folder=None, revision=None,
             local_files_only: bool = False, **kwargs):  # fmt: skip
        hub = {
            "subfolder": subfolder,
            "token": token,
            "cache_folder": cache_folder,
            "revision": revision,
            "local_files_only": local_files_only,
        }
        module = cls(**cls.load_config(model_name_or_path=model_name_or_path, **hub))
        cls.load_torch_weights(model_name_or_path, model=module, **hub)
        return module

    def get_embedding_dimension(self) -> int:
        return self.embedding_dimension


class GeMPooling(_SavedModule):
    """(Group) generalized-mean pooling with learnable exponents; ``groups=1`` is GeM."""

    config_keys = ["embedding_dimension", "groups", "p_init", "eps"]

    def __init__(self, embedding_dimension: int, groups: int = 1, p_init: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        if groups < 1 or embedding_dimension % groups:
            raise ValueError(f"groups={groups} must divide embedding_dimension={embedding_dimension}")
        self.embedding_dimension, self.groups, self.p_init, self.eps = embedding_dimension, groups, p_init, eps
        self.p = nn.Parameter(torch.full((groups,), float(p_init)))

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        x = features["token_embeddings"].float()
        mask = _mask(features, x)
        p = self.p.clamp(min=1.0).repeat_interleave(self.embedding_dimension // self.groups)  # (D,), one per channel
        powered = torch.sign(x) * x.abs().clamp(min=self.eps) ** p
        m = _masked_mean(powered, mask)
        features["sentence_embedding"] = torch.sign(m) * m.abs().clamp(min=self.eps) ** (1.0 / p)
        return features


class LatentAttentionPooling(_SavedModule):
    """NV-Embed's latent-attention layer followed by mean pooling."""

    config_keys = ["embedding_dimension", "num_latents", "num_heads", "mlp_ratio"]

    def __init__(self, embedding_dimension: int, num_latents: int = 512, num_heads: int = 8, mlp_ratio: int = 4) -> None:
        super().__init__()
        d = embedding_dimension
        if d % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide embedding_dimension={d}")
        self.embedding_dimension, self.num_latents, self.num_heads, self.mlp_ratio = d, num_latents, num_heads, mlp_ratio
        self.latents = nn.Parameter(torch.randn(num_latents, d) / math.sqrt(d))
        self.norm_tokens, self.norm_latents, self.norm_mlp = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.to_q = nn.Linear(d, d, bias=False)
        self.to_kv = nn.Linear(d, 2 * d, bias=False)
        self.to_out = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(), nn.Linear(mlp_ratio * d, d))
        for layer in (self.to_out, self.mlp[2]):  # residual branches start closed: pooling starts as mean
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def attend(self, h: torch.Tensor) -> torch.Tensor:
        """Token states (B, T, D) after the cross-attention and MLP blocks, before pooling."""
        b, t, d = h.shape
        heads = self.num_heads
        q = self.to_q(self.norm_tokens(h)).view(b, t, heads, d // heads).transpose(1, 2)
        k, v = self.to_kv(self.norm_latents(self.latents)).chunk(2, dim=-1)
        k = k.view(1, -1, heads, d // heads).transpose(1, 2).expand(b, -1, -1, -1)
        v = v.view(1, -1, heads, d // heads).transpose(1, 2).expand(b, -1, -1, -1)
        att = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # every token attends to every latent
        h = h + self.to_out(att.transpose(1, 2).reshape(b, t, d))
        return h + self.mlp(self.norm_mlp(h))

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        h = features["token_embeddings"]
        features["sentence_embedding"] = _masked_mean(self.attend(h.to(self.latents.dtype)), _mask(features, h))
        return features


def pooling_module(mode: str, dimension: int, attention_heads: int = 1, latents: int = 512, latent_heads: int = 8) -> nn.Module:
    """A fresh pooling module for ``mode`` (not ``model``) on ``dimension``-wide token states."""
    if mode in _ST_MODES:
        from sentence_transformers.sentence_transformer.modules import Pooling

        return Pooling(dimension, pooling_mode=_ST_MODES[mode])
    if mode == "gem":
        return GeMPooling(dimension, groups=1)
    if mode == "ggem":
        return GeMPooling(dimension, groups=attention_heads)
    if mode == "latent_attention":
        return LatentAttentionPooling(dimension, num_latents=latents, num_heads=latent_heads)
    raise ValueError(f"unknown pooling {mode!r}; expected one of {POOLING_MODES}")


def is_pooling(module: nn.Module) -> bool:
    from sentence_transformers.sentence_transformer.modules import Pooling

    return isinstance(module, (Pooling, GeMPooling, LatentAttentionPooling))


def set_pooling(st_model, mode: str, latents: int = 512, latent_heads: int = 8) -> None:
    """Replace ``st_model``'s pooling module (or insert one after the backbone) with ``mode``'s."""
    if mode == "model":
        return
    config = st_model[0].auto_model.config
    dim = int(config.hidden_size)
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    module = pooling_module(mode, dim, attention_heads=heads, latents=latents, latent_heads=latent_heads)
    module.to(st_model.device)
    key = next((k for k, m in st_model._modules.items() if is_pooling(m)), None)
    if key is None:
        raise ValueError(f"no pooling module to replace in {list(st_model._modules)}")
    st_model._modules[key] = module


def needs_trust_remote_code(model_folder: str) -> bool:
    """Whether a saved folder names this package's modules (so loading needs ``trust_remote_code``).

    Only ``retriever_forge.*`` classes count: a folder that names any other outside code, or
    whose Hugging Face config maps to remote code (``auto_map``), is left to the user to trust.
    """
    import json
    from pathlib import Path

    folder = Path(model_folder)
    modules = folder / "modules.json"
    if not modules.is_file():
        return False
    types = [m["type"] for m in json.loads(modules.read_text())]
    outside = [t for t in types if not t.startswith("sentence_transformers.")]
    if not outside or any(not t.startswith("retriever_forge.") for t in outside):
        return False
    config = folder / "config.json"
    return not (config.is_file() and "auto_map" in json.loads(config.read_text()))
