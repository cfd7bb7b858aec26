"""The offline demo corpus: docstrings of the Python standard library, split into passages.

Every machine with Python has this text, so the whole pipeline can run with no download. The
module list is fixed and the order deterministic, so the same interpreter version always
builds the same corpus (its content hash is recorded like any other artifact's).

Example:
    >>> from retriever_forge.demo_corpus import build_demo_corpus
    >>> corpus = build_demo_corpus(max_passages=10)
    >>> corpus.height, corpus["doc_id"][0]
    (10, 'argparse#0')
"""

from __future__ import annotations

import importlib
import inspect
import re

import polars as pl

from retriever_forge import schemas

# Modules whose docstrings read like documentation (not one-liners), in a fixed order.
DEMO_MODULES = (
    "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "contextlib", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools",
    "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "http.server", "imaplib", "inspect",
    "ipaddress", "itertools", "json", "logging", "mailbox", "math", "mimetypes", "operator",
    "optparse", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "sched", "secrets",
    "selectors", "shlex", "shutil", "smtplib", "socket", "sqlite3", "statistics", "string",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "typing",
    "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "weakref", "xml.dom.minidom",
    "zipfile", "zlib",
)  # fmt: skip

MIN_WORDS = 25
MAX_WORDS = 160


def _docstrings(module_name: str):
    """(qualified name, docstring) of a module and its public classes and functions."""
    try:
        mod = importlib.import_module(module_name)
    except ImportError:
        return
    if mod.__doc__:
        yield module_name, mod.__doc__
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            doc = inspect.getdoc(obj)
            if doc:
                yield f"{module_name}.{name}", doc
            if inspect.isclass(obj):
                for mname, meth in sorted(vars(obj).items()):
                    if not mname.startswith("_") and inspect.isfunction(meth) and (mdoc := inspect.getdoc(meth)):
                        yield f"{module_name}.{name}.{mname}", mdoc


def _passages(doc: str) -> list[str]:
    """Split a docstring into prose passages of MIN_WORDS..MAX_WORDS words."""
    paragraphs = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", doc)]
    # Drop code examples and tables: they make poor passages for query generation.
    paragraphs = [p for p in paragraphs if p and not p.startswith((">>>", "...", "|", "+-", "=="))]
    out, current = [], []
    for p in paragraphs:
        words = p.split()
        if current and len(current) + len(words) > MAX_WORDS:
            out.append(" ".join(current))
            current = []
        current.extend(words[:MAX_WORDS])
    if current:
        out.append(" ".join(current))
    return [p for p in out if len(p.split()) >= MIN_WORDS]


def build_demo_corpus(max_passages: int = 400) -> pl.DataFrame:
    """Build up to ``max_passages`` passages, spread round-robin over the demo modules."""
    per_module: list[list[dict]] = []
    for module_name in DEMO_MODULES:
        rows, seen = [], set()
        for qualname, doc in _docstrings(module_name):
            for i, passage in enumerate(_passages(doc)):
                if passage in seen:  # inherited/aliased docstrings repeat
                    continue
                seen.add(passage)
                rows.append({"doc_id": f"{qualname}#{i}", "title": qualname, "text": passage})
        if rows:
            per_module.append(rows)
    # Round-robin across modules so a small corpus still covers many topics.
    picked, depth = [], 0
    while len(picked) < max_passages and any(depth < len(r) for r in per_module):
        for rows in per_module:
            if depth < len(rows) and len(picked) < max_passages:
                picked.append(rows[depth])
        depth += 1
    return pl.DataFrame(picked, schema=schemas.CORPUS)
