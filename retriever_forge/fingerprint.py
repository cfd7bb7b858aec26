"""The version of a dataset's source: changes exactly when what the corpus asset would read changes.

Nightly automation observes this version and re-runs a dataset's graph only when it moved. It
covers the dataset's entry in the datasets file (a changed split, override or row policy is a
change) and the content of every file the dataset is read from. Hashing a large corpus every
night is wasteful, so each file's hash is kept in a small cache with its size and modification
time and recomputed only when those change (a touched file with equal bytes keeps its version).

Sources without local files (``ir_datasets``, ``demo``) are versioned by their entry (and, for the
demo, the Python version whose docstrings it is built from).

Example:
    >>> import tempfile, pathlib
    >>> from retriever_forge.datasets import DatasetSpec
    >>> from retriever_forge.fingerprint import dataset_version
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\\n')
    >>> spec = DatasetSpec(name="t", source="beir", path=str(root))
    >>> v1 = dataset_version(spec, root / "cache.json")
    >>> v1 == dataset_version(spec, root / "cache.json")
    True
    >>> _ = (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "y"}\\n')
    >>> v1 == dataset_version(spec, root / "cache.json")
    False
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from retriever_forge.datasets import DatasetError, DatasetSpec
from retriever_forge.hashing import hash_file, hash_json


def source_files(spec: DatasetSpec) -> list[Path]:
    """The local files ``spec``'s corpus, queries and judgments are read from (those that exist,
    the corpus file always: a missing corpus raises :class:`DatasetError` with its path)."""
    if spec.source == "beir":
        if not spec.path:
            raise DatasetError(f"dataset {spec.name!r}: source 'beir' needs 'path' (a folder with corpus.jsonl)")
        root = Path(spec.path)
        corpus = root / "corpus.jsonl"
        optional = [root / "queries.jsonl", root / "qrels" / f"{spec.split}.tsv"]
    elif spec.source == "files":
        if not spec.corpus:
            raise DatasetError(f"dataset {spec.name!r}: source 'files' needs 'corpus' (a .jsonl or .parquet file)")
        if "://" in spec.corpus:
            return []  # remote files: versioned by their entry only
        corpus = Path(spec.corpus)
        optional = [Path(p) for p in (spec.queries, spec.qrels) if p and "://" not in p]
    else:
        return []
    if not corpus.is_file():
        raise DatasetError(f"dataset {spec.name!r}: {corpus}: not found")
    return [corpus, *(p for p in optional if p.is_file())]


def dataset_version(spec: DatasetSpec, cache_path: str | os.PathLike | None = None) -> str:
    """A short hash of ``spec``'s entry and its source files' content.

    Args:
        spec: the dataset.
        cache_path: a JSON file keeping each file's size, mtime and hash between calls (created
            if absent; a corrupt cache is ignored). Without it every file is hashed.

    Raises:
        DatasetError: the dataset cannot be read (missing folder or file, ``ir_datasets`` id
            not cached offline), with one line saying which and why.
    """
    files = check_readable(spec)
    cache = _read_cache(cache_path)
    hashes = {}
    for path in files:
        st = path.stat()
        key = str(path.resolve())
        entry = cache.get(key)
        if not (entry and entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns):
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": hash_file(path)}
            cache[key] = entry
        hashes[path.name if spec.source == "beir" else key] = entry["sha256"]
    if cache_path is not None and files:
        _write_cache(Path(cache_path), cache)
    extra = {"python": sys.version.split()[0]} if spec.source == "demo" else {}
    return hash_json({"entry": spec.as_dict(), "files": hashes, **extra})[:24]


def check_readable(spec: DatasetSpec) -> list[Path]:
    """Raise :class:`DatasetError` (one line: which dataset, what is missing) unless ``spec`` can
    be read here; returns its local source files. Cheap: files are only looked up, not read."""
    files = source_files(spec)
    if spec.source == "ir_datasets":
        _check_ir_datasets_cached(spec)
    return files


def _check_ir_datasets_cached(spec: DatasetSpec) -> None:
    """Reading the first document fails fast (offline) when the id is not in the local cache."""
    import ir_datasets

    from retriever_forge.datasets import _fail_fast_network

    try:
        ds = ir_datasets.load(spec.id)
    except KeyError as e:
        raise DatasetError(f"dataset {spec.name!r}: unknown ir_datasets id {spec.id!r}") from e
    try:
        with _fail_fast_network():
            next(iter(ds.docs_iter()))
    except Exception as e:  # noqa: BLE001 - any download failure means: not available here
        raise DatasetError(
            f"dataset {spec.name!r}: ir_datasets id {spec.id!r} is not in the local cache and could not be downloaded ({type(e).__name__})"
        ) from e


def report_once(problems: dict[str, str], state_path: str | os.PathLike) -> dict[str, str]:
    """The entries of ``problems`` (dataset -> one-line reason) not reported before with the same
    reason; remembers them in ``state_path``. A dataset that is readable again is forgotten, so a
    later failure is reported afresh.

    >>> import tempfile, pathlib
    >>> state = pathlib.Path(tempfile.mkdtemp()) / "reported.json"
    >>> report_once({"a": "missing"}, state), report_once({"a": "missing"}, state)
    ({'a': 'missing'}, {})
    >>> report_once({}, state), report_once({"a": "missing"}, state)
    ({}, {'a': 'missing'})
    """
    seen = _read_cache(state_path)
    new = {name: line for name, line in problems.items() if seen.get(name) != line}
    _write_cache(Path(state_path), dict(problems))
    return new


def _read_cache(path) -> dict:
    if path is None or not Path(path).is_file():
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, cache: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, sort_keys=True))
    os.replace(tmp, path)
