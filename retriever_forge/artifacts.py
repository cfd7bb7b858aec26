"""A content-addressed, write-once artifact store.

Every artifact — a Parquet table, a model folder, a FAISS index, a JSON document — is stored
under a path derived from the hash of its content and is never overwritten::

    <root>/artifacts/<kind>/<hash[:2]>/<hash>/<payload>
    <root>/artifacts/<kind>/<hash[:2]>/<hash>/manifest.json     (provenance, see provenance.py)

Writing identical content twice stores it once (the second write is a no-op that returns the
same reference), which is what makes re-materialising an unchanged graph free.

Writes are all-or-nothing: the payload is written to a hidden temporary name beside its final
place and renamed into place only when complete (an atomic rename on a local disk). A write that
fails — a full disk, an I/O error — removes its temporary files and leaves every stored artifact
as it was; a process killed mid-write leaves at most a hidden ``.*.tmp`` entry that no reader
sees (:meth:`ArtifactStore.partial_writes` lists them, :meth:`ArtifactStore.sweep_partial_writes`
removes old ones) and the next write of the same content stores it afresh. The root is a
local folder by default or any fsspec URL (``s3://bucket/prefix``) when ``s3fs``/``gcsfs`` is
installed; remote artifacts are fetched to a local cache folder before models and indexes are
loaded.

Example:
    >>> import polars as pl, tempfile
    >>> from retriever_forge.artifacts import ArtifactStore
    >>> store = ArtifactStore(tempfile.mkdtemp())
    >>> ref = store.put_table(pl.DataFrame({"a": [1, 2]}), kind="example")
    >>> ref == store.put_table(pl.DataFrame({"a": [1, 2]}), kind="example")
    True
    >>> store.read_table(ref)["a"].to_list()
    [1, 2]
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import fsspec
import polars as pl

from retriever_forge.hashing import hash_bytes, hash_file, hash_tree

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TABLE_FILE = "data.parquet"
JSON_FILE = "data.json"
_KIND_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")


class ArtifactError(RuntimeError):
    pass


@dataclass(frozen=True)
class ArtifactRef:
    """A pointer to one stored artifact: its kind, content hash and location."""

    kind: str
    hash: str
    uri: str  # folder holding the payload and manifest.json
    payload: str  # file or folder name inside ``uri``
    format: str  # "parquet", "json" or "folder"

    @property
    def payload_uri(self) -> str:
        return f"{self.uri}/{self.payload}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArtifactRef:
        return cls(**json.loads(text))


def read_pointer(store: ArtifactStore | str | os.PathLike, asset: str, partition: str) -> ArtifactRef:
    """The :class:`ArtifactRef` that ``asset``'s latest materialization for ``partition`` stored.

    ``store`` is an :class:`ArtifactStore` or its root (a folder or an fsspec URL); the pointer is
    read from the same filesystem as the artifacts (see :meth:`ArtifactStore.pointer_path`).
    """
    store = store if isinstance(store, ArtifactStore) else ArtifactStore(store)
    return store.read_pointer(asset, partition)


def _complete_marker(payload_uri: str) -> str:
    # An object store has no folder rename: a remote folder is committed object by object, and
    # this empty object beside it, written last, is what says every object of it is there.
    head, _, name = payload_uri.rpartition("/")
    return f"{head}/.{name}.complete"


class ArtifactStore:
    """Write-once storage of artifacts addressed by content hash."""

    def __init__(self, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
        self.root = str(root).rstrip("/")
        self.fs, self._root_path = fsspec.core.url_to_fs(self.root)
        self.is_local = self.fs.protocol in ("file", ("file", "local"), "local") or "file" in self.fs.protocol
        if self.is_local:
            Path(self._root_path).mkdir(parents=True, exist_ok=True)
        self.cache_dir = Path(cache_dir or (Path(self._root_path) / ".cache" if self.is_local else tempfile.gettempdir()))

    # ------------------------------------------------------------------ paths

    def _artifact_dir(self, kind: str, content_hash: str) -> str:
        if not kind or not set(kind) <= _KIND_CHARS:
            raise ArtifactError(f"artifact kind {kind!r} must be lowercase letters, digits, '_' or '-'")
        if len(content_hash) != 64 or not all(c in "0123456789abcdef" for c in content_hash):
            raise ArtifactError(f"not a sha256 content hash: {content_hash!r}")
        return f"{self._root_path}/artifacts/{kind}/{content_hash[:2]}/{content_hash}"

    def _ref(self, kind: str, content_hash: str, payload: str, fmt: str) -> ArtifactRef:
        return ArtifactRef(kind=kind, hash=content_hash, uri=self._artifact_dir(kind, content_hash), payload=payload, format=fmt)

    def exists(self, ref: ArtifactRef) -> bool:
        if ref.format == "folder" and not self.is_local:
            return self.fs.exists(_complete_marker(ref.payload_uri))
        return self.fs.exists(ref.payload_uri)

    # ------------------------------------------------------------------ named, replaceable documents
    # The only mutable files: which artifact is the latest per (asset, partition), and the latest
    # scoreboard per dataset. They live on the store's filesystem beside the artifacts, so every
    # process and machine that can read the artifacts sees the same ones.

    def pointer_path(self, asset: str, partition: str) -> str:
        """Where the latest materialization of ``asset`` for ``partition`` is recorded: a small JSON
        :class:`ArtifactRef` under ``<root>/refs/`` (written by the Dagster IO manager).

        Example:
            >>> ArtifactStore("memory://forge").pointer_path("corpus", "cacm")
            '/forge/refs/corpus/cacm.json'
        """
        return self._named_path("refs", asset, f"{partition}.json")

    def write_pointer(self, asset: str, partition: str, ref: ArtifactRef) -> None:
        self.write_text(self.pointer_path(asset, partition), ref.to_json())

    def read_pointer(self, asset: str, partition: str) -> ArtifactRef:
        path = self.pointer_path(asset, partition)
        try:
            return ArtifactRef.from_json(self.read_text(path))
        except FileNotFoundError:
            raise KeyError(f"no materialization of {asset!r} for partition {partition!r} ({self._url(path)})") from None

    def scoreboard_path(self, dataset: str, suffix: str = "md") -> str:
        """The latest scoreboard of ``dataset`` (``md`` for people, ``json`` for programs)."""
        return self._named_path("scoreboards", f"{dataset}.{suffix}")

    def read_scoreboard(self, dataset: str) -> dict | None:
        """The latest scoreboard record of ``dataset`` (``None`` before its first benchmark)."""
        try:
            return json.loads(self.read_text(self.scoreboard_path(dataset, "json")))
        except FileNotFoundError:
            return None

    def iter_scoreboards(self):
        """Every dataset's latest scoreboard record."""
        for path in sorted(self.fs.glob(self._named_path("scoreboards", "*.json"))):
            with self.fs.open(path, "r") as f:
                yield json.load(f)

    def write_text(self, path: str, text: str) -> None:
        """Replace the document at ``path`` (a path from this store) whole: readers see the old
        or the new text, never a part (a rename on a local disk, a single PUT on object stores)."""
        if not self.is_local:
            self.fs.pipe_file(path, text.encode())
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_name(f".{Path(path).name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def read_text(self, path: str) -> str:
        """Raises ``FileNotFoundError`` when there is no document at ``path``."""
        with self.fs.open(path, "r") as f:
            return f.read()

    def url(self, path: str) -> str:
        """``path`` as a URL a person (or ``fsspec.open``) can use: the protocol is kept for remote stores."""
        return self._url(path)

    def _url(self, path: str) -> str:
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def _named_path(self, *parts: str) -> str:
        for part in parts:  # an asset key may have a prefix ("a/b"); no segment may climb out
            if any(not seg or seg.startswith(".") for seg in part.split("/")):
                raise ArtifactError(f"name {part!r} may not be empty or have a segment that starts with '.'")
        return "/".join((self._root_path, *parts))

    # ------------------------------------------------------------------ writing

    def _write_once(self, ref: ArtifactRef, write_tmp) -> ArtifactRef:
        """Write the payload with ``write_tmp(tmp_path)`` and rename it into place, all or nothing.

        On any failure (``ENOSPC`` included) the temporary payload is removed, an artifact folder
        left empty is removed too, and the exception propagates with a note naming the artifact.
        """
        if self.exists(ref):
            return ref  # same content already stored: write-once means nothing to do
        folder = ref.format == "folder"
        tmp = f"{ref.uri}/.{ref.payload}.{uuid.uuid4().hex}.tmp"
        try:
            self.fs.makedirs(ref.uri, exist_ok=True)
            write_tmp(tmp)
            self._commit(tmp, ref.payload_uri, folder)
        except BaseException as exc:
            self._discard(tmp, ref.uri)
            if isinstance(exc, Exception):
                exc.add_note(f"while writing artifact {ref.kind}/{ref.hash}: nothing was stored, stored artifacts are unchanged")
            raise
        return ref

    def _commit(self, tmp: str, final: str, folder: bool) -> None:
        """Rename a complete temporary payload into place (atomic on a local disk)."""
        if not self.is_local:
            if folder:
                self._commit_remote_folder(tmp, final)
            else:
                self.fs.mv(tmp, final)
            return
        if not folder:
            os.replace(tmp, final)  # same bytes as any concurrent writer's: replacing is harmless
            return
        try:
            os.rename(tmp, final)  # never moves *into* an existing folder, unlike shutil.move
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not os.path.isdir(final):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent writer committed the same content first

    def _commit_remote_folder(self, tmp: str, final: str) -> None:
        """Copy every object of a complete temporary folder to its final key, then mark it complete.

        Readers go by :meth:`exists` (the marker), so a copy interrupted half way is never read as
        the artifact; the next writer of the same content copies it again. (``fs.mv`` of a folder
        fails on S3: it tries to copy the folder's own key, which an object store does not have.)
        """
        for src in self.fs.find(tmp):
            self.fs.copy(src, final + src[len(tmp) :])
        self.fs.pipe_file(_complete_marker(final), b"")
        self.fs.rm(tmp, recursive=True)

    def _discard(self, tmp: str, artifact_dir: str) -> None:
        try:
            if self.fs.exists(tmp):
                self.fs.rm(tmp, recursive=True)
            if self.fs.exists(artifact_dir) and not self.fs.ls(artifact_dir):
                self.fs.rmdir(artifact_dir)
        except OSError as exc:  # cleanup is best effort: the temporary name is invisible to readers anyway
            log.warning("could not remove the partial write %s: %s", tmp, exc)

    def _put_bytes(self, data: bytes, kind: str, payload: str, fmt: str) -> ArtifactRef:
        def write(tmp: str) -> None:
            with self.fs.open(tmp, "wb") as f:
                f.write(data)

        return self._write_once(self._ref(kind, hash_bytes(data), payload, fmt), write)

    def put_table(self, df: pl.DataFrame, kind: str) -> ArtifactRef:
        """Store a table as Parquet; its hash is the hash of the Parquet bytes (deterministic)."""
        buf = io.BytesIO()
        df.write_parquet(buf, compression="zstd", statistics=False)
        return self._put_bytes(buf.getvalue(), kind, TABLE_FILE, "parquet")

    def put_json(self, obj, kind: str) -> ArtifactRef:
        data = json.dumps(obj, sort_keys=True, indent=1, default=str).encode()
        return self._put_bytes(data, kind, JSON_FILE, "json")

    def put_folder(self, folder: str | os.PathLike, kind: str, payload: str = "model") -> ArtifactRef:
        """Store a folder (a model); its hash covers every file's relative path and bytes."""
        folder = Path(folder)

        def write(tmp: str) -> None:
            if self.is_local:
                shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns(".cache", "checkpoints"))
            else:
                self.fs.put(str(folder), tmp, recursive=True)

        return self._write_once(self._ref(kind, hash_tree(folder), payload, "folder"), write)

    def write_manifest(self, ref: ArtifactRef, manifest: dict) -> bool:
        """Write the artifact's provenance once; returns False if one was already recorded.

        The first manifest stays: it describes how this exact content was first made.
        """
        path = f"{ref.uri}/{MANIFEST}"
        if self.fs.exists(path):
            return False
        tmp = f"{ref.uri}/.{MANIFEST}.{uuid.uuid4().hex}.tmp"
        try:
            with self.fs.open(tmp, "w") as f:
                json.dump(manifest, f, sort_keys=True, indent=1, default=str)
            self._commit(tmp, path, folder=False)
        except BaseException:
            self._discard(tmp, ref.uri)
            raise
        return True

    # ------------------------------------------------------------------ reading

    def read_table(self, ref: ArtifactRef) -> pl.DataFrame:
        with self.fs.open(ref.payload_uri, "rb") as f:
            return pl.read_parquet(f)

    def read_json(self, ref: ArtifactRef):
        with self.fs.open(ref.payload_uri, "r") as f:
            return json.load(f)

    def read_manifest(self, ref: ArtifactRef) -> dict | None:
        path = f"{ref.uri}/{MANIFEST}"
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "r") as f:
            return json.load(f)

    def local_path(self, ref: ArtifactRef) -> Path:
        """A local path to the payload (remote payloads are downloaded once into the cache)."""
        if self.is_local:
            return Path(ref.payload_uri)
        local = self.cache_dir / ref.kind / ref.hash / ref.payload
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get(ref.payload_uri, str(local), recursive=ref.format == "folder")
        return local

    # ------------------------------------------------------------------ listing

    def iter_refs(self):
        """Every stored artifact (for ``verify`` and ``trace``)."""
        base = f"{self._root_path}/artifacts"
        if not self.fs.exists(base):
            return
        for manifest_path in sorted(self.fs.glob(f"{base}/*/*/*/{MANIFEST}")):
            with self.fs.open(manifest_path, "r") as f:
                m = json.load(f)
            yield self._ref(m["kind"], m["content_hash"], m["payload"], m["format"]), m

    def partial_writes(self) -> list[str]:
        """Temporary entries left by writers that were killed mid-write (invisible to readers)."""
        base = f"{self._root_path}/artifacts"
        if not self.fs.exists(base):
            return []
        return sorted(self.fs.glob(f"{base}/*/*/*/.*.tmp"))

    def sweep_partial_writes(self, min_age_s: float = 3600.0) -> list[str]:
        """Remove :meth:`partial_writes` older than ``min_age_s`` (younger ones may be in progress)."""
        removed = []
        for path in self.partial_writes():
            try:
                modified = self.fs.modified(path).timestamp()
            except (NotImplementedError, FileNotFoundError, AttributeError):
                continue
            if time.time() - modified >= min_age_s:
                self.fs.rm(path, recursive=True)
                removed.append(path)
        return removed

    def find(self, content_hash_prefix: str) -> list[tuple[ArtifactRef, dict]]:
        return [(r, m) for r, m in self.iter_refs() if r.hash.startswith(content_hash_prefix)]

    def rehash(self, ref: ArtifactRef) -> str:
        """Recompute an artifact's content hash from the bytes on storage (for a remote store, read
        afresh from the store, never from the local cache, which would hide a changed object)."""
        if self.is_local:
            path = Path(ref.payload_uri)
            return hash_tree(path) if ref.format == "folder" else hash_file(path)
        self.fs.invalidate_cache(ref.uri)  # a listing cached earlier in this process holds the old size and ETag
        if ref.format != "folder":
            h = hashlib.sha256()
            with self.fs.open(ref.payload_uri, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            return h.hexdigest()
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / ref.payload
            self.fs.get(ref.payload_uri, str(local), recursive=True)
            return hash_tree(local)
