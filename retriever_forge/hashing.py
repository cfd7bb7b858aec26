"""Content hashes: the identity of every artifact, model and prompt.

Example:
    >>> from retriever_forge.hashing import hash_bytes, hash_json
    >>> hash_bytes(b"abc")[:12]
    'ba7816bf8f01'
    >>> hash_json({"b": 1, "a": [1, 2]}) == hash_json({"a": [1, 2], "b": 1})
    True
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_CHUNK = 1 << 20


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_text(text: str) -> str:
    return hash_bytes(text.encode("utf-8"))


def hash_json(obj) -> str:
    """Hash of a JSON-serialisable object, independent of key order."""
    return hash_text(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str))


def hash_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def hash_tree_files(root: str | os.PathLike, *, suffixes: tuple[str, ...] | None = None) -> dict[str, str]:
    """Every file of a folder that counts towards its :func:`hash_tree`: relative path -> sha256.

    Kept in folder artifacts' manifests so a failed verification can name the file that changed.
    """
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if suffixes is not None:
        files = [p for p in files if p.name.endswith(suffixes)]
    out = {}
    for p in files:
        rel = p.relative_to(root).as_posix()
        # Caches and training checkpoints are not part of a model's identity.
        if rel.startswith((".cache/", "checkpoints/")):
            continue
        out[rel] = hash_file(p)
    return out


def hash_tree(root: str | os.PathLike, *, suffixes: tuple[str, ...] | None = None) -> str:
    """Hash of a folder: every file's relative path and bytes, in sorted order.

    ``suffixes`` restricts the hash to e.g. weight files, so a model's identity does not change
    when a README beside it does.
    """
    h = hashlib.sha256()
    for rel, digest in hash_tree_files(root, suffixes=suffixes).items():
        h.update(rel.encode() + b"\0")
        h.update(digest.encode() + b"\0")
    return h.hexdigest()
