"""Decoder LLMs as embedders: a bidirectional attention mask, plain-text inputs, and padding for last-token pooling.

NV-Embed (Lee et al. 2024) removes the causal mask of a decoder LLM during contrastive
training, so every token sees the whole text. In transformers >= 5 a Llama-style model decides
causality in two places, and both must change:

* ``create_causal_mask`` returns ``create_bidirectional_mask`` when ``config.is_causal`` is
  ``False`` (the padding mask only);
* with no padding that mask is ``None``, and the SDPA/flash kernels then fall back to each
  attention module's own ``is_causal`` flag, which Llama hard-codes to ``True``.

:func:`set_bidirectional` sets both. A saved folder keeps ``is_causal: false`` in its
``config.json``, but a reload rebuilds the attention modules with ``is_causal = True``; the
:class:`BidirectionalMask` module placed after the backbone in the saved folder sets the flags
again when sentence-transformers finishes building the model (``on_model_ready``), so the
reloaded model encodes as it was trained (it is a ``retriever_forge`` class: load the folder
with ``trust_remote_code=True``).

Example (needs a model)::

    set_bidirectional(st_model[0].auto_model, True)
"""

from __future__ import annotations

from typing import Any

from sentence_transformers.base.modules.module import Module
from torch import nn


def set_bidirectional(model: nn.Module, on: bool = True) -> int:
    """Make ``model``'s self-attention bidirectional (``on``) or causal again; returns how many
    attention modules carry an ``is_causal`` flag (0 for an encoder such as BERT)."""
    model.config.is_causal = not on
    changed = 0
    for module in model.modules():
        if module is not model and isinstance(getattr(module, "is_causal", None), bool):
            module.is_causal = not on
            changed += 1
    return changed


def is_decoder(model: nn.Module) -> bool:
    """A causal LM backbone (Llama, Qwen, Mistral, GPT-2 ...), judged by its attention flags."""
    return any(getattr(m, "is_causal", False) is True for m in model.modules() if m is not model) or bool(
        getattr(model.config, "is_decoder", False)
    )


def prepare_tokenizer(st_model) -> None:
    """Give a decoder's tokenizer a pad token (many have none; the EOS token is the usual choice).

    Either padding side works with :mod:`retriever_forge.pooling`'s last-token mode, which
    locates each row's last real token from the attention mask.
    """
    tokenizer = st_model.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def use_plain_text(st_model) -> bool:
    """Encode a decoder's inputs as plain text, not as chat messages; True if that changed anything.

    sentence-transformers renders every input through the tokenizer's chat template when it has
    one (its ``message`` modality): an instruct model's system prompt ("You are a helpful AI
    assistant ...") then opens every passage and the last token is the template's closing one,
    the same for every text. Decoder embedders (NV-Embed, e5-mistral, Qwen3-Embedding) embed the
    raw text, the query behind its instruction. Dropping ``message`` from the module's modalities
    is saved in the folder's ``sentence_bert_config.json``, so the published model encodes the same way.
    """
    module = st_model[0]
    modalities = getattr(module, "modality_config", None)
    if not isinstance(modalities, dict) or "message" not in modalities or "text" not in modalities:
        return False
    module.modality_config = {name: entry for name, entry in modalities.items() if name != "message"}
    formatter = getattr(module, "input_formatter", None)
    if formatter is not None:
        formatter.supported_modalities = list(module.modality_config)
    return True


class BidirectionalMask(Module):
    """A no-op module that keeps a saved decoder embedder bidirectional on reload."""

    config_keys: list[str] = []

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        return features

    def on_model_ready(self, model) -> None:
        set_bidirectional(model[0].auto_model, True)

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)


def add_bidirectional_module(st_model) -> None:
    """Set the backbone bidirectional and insert :class:`BidirectionalMask` after it."""
    set_bidirectional(st_model[0].auto_model, True)
    if any(isinstance(m, BidirectionalMask) for m in st_model._modules.values()):
        return
    items = list(st_model._modules.items())
    st_model._modules.clear()
    st_model._modules[items[0][0]] = items[0][1]
    st_model._modules["bidirectional_mask"] = BidirectionalMask()
    for name, module in items[1:]:
        st_model._modules[name] = module
