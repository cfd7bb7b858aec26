"""Dataset sources: BEIR folders, JSONL/Parquet files, ``ir_datasets`` ids and the offline demo.

Every source yields the same three polars tables (see :mod:`retriever_forge.schemas`):
``corpus`` (doc_id, title, text), and — when the dataset has human judgments — ``queries``
(query_id, text) and ``qrels`` (query_id, doc_id, relevance).

Named datasets live in a YAML file (``datasets.yaml`` at the project root by default, or the
file named by ``RETRIEVER_FORGE_DATASETS``), so users add datasets without code changes:

.. code-block:: yaml

    datasets:
      cacm:
        source: beir
        path: ../shared/datasets/cacm
        overrides: {synthetic_queries: {documents_to_sample: 1000}}
      scifact: {source: ir_datasets, id: beir/scifact/test}
      notes: {source: files, corpus: data/notes.parquet, id_field: note_id, text_field: body}
      nightly: {source: beir, path: /data/crawl, on_bad_rows: quarantine, max_passage_chars: 50000}

Bad input: by default (``on_bad_rows: error``) the first bad row stops loading with a
:class:`DatasetError` naming the file, the line and the problem (malformed JSON, non-UTF-8
bytes, a missing id or text field of the wrong type, a duplicate id, a passage longer than
``max_passage_chars``, a judgment naming an unknown query or document). With
``on_bad_rows: quarantine`` each such row is set aside instead, with the same reason, in
:attr:`LoadedDataset.quarantine` (the corpus asset stores it and an asset check fails when more
than ``max_quarantine_share`` of the corpus rows were set aside). Empty or whitespace-only
passages are quarantined under either policy: there is nothing to embed.

Example:
    >>> from retriever_forge.datasets import DatasetSpec, load_dataset
    >>> ds = load_dataset(DatasetSpec(name="demo", source="demo", max_documents=20))
    >>> ds.corpus.columns, ds.has_judgments
    (['doc_id', 'title', 'text'], False)
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl
import yaml

from retriever_forge import schemas

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATASETS_FILE = PROJECT_ROOT / "datasets.yaml"
SourceKind = Literal["beir", "files", "ir_datasets", "demo"]
BAD_ROW_POLICIES = ("error", "quarantine")
QUARANTINE = {"table": pl.String, "file": pl.String, "line": pl.Int64, "doc_id": pl.String, "reason": pl.String}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class DatasetError(ValueError):
    """Bad dataset input; the message names the file, the line and what is wrong."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from and how to read it."""

    name: str
    source: SourceKind = "beir"
    path: str | None = None  # BEIR folder
    id: str | None = None  # ir_datasets id
    corpus: str | None = None  # files: corpus .jsonl/.parquet
    queries: str | None = None  # files: optional queries file
    qrels: str | None = None  # files: optional qrels .tsv/.jsonl/.parquet
    split: str = "test"  # BEIR qrels split
    id_field: str = "_id"
    title_field: str = "title"
    text_field: str = "text"
    max_documents: int | None = None  # demo: how many passages to build
    description: str = ""
    on_bad_rows: str = "error"  # error: stop at the first bad row; quarantine: set it aside with the reason
    max_passage_chars: int = 100_000  # longer passages are bad rows (never fed whole to a tokenizer)
    max_quarantine_share: float = 0.05  # corpus asset check: fail above this share of quarantined rows
    budget: str | None = None  # quick | standard | thorough: this dataset's budget preset unless the run sets one
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not _NAME_RE.match(self.name):
            raise DatasetError(
                f"dataset name {self.name!r} is not allowed: use letters, digits, '_', '.', '-' "
                "(it becomes a partition key and a folder name, so it may not contain '/' or '..')"
            )
        if self.on_bad_rows not in BAD_ROW_POLICIES:
            raise DatasetError(f"dataset {self.name!r}: on_bad_rows must be one of {BAD_ROW_POLICIES}, not {self.on_bad_rows!r}")
        if not isinstance(self.max_passage_chars, int) or self.max_passage_chars < 1:
            raise DatasetError(f"dataset {self.name!r}: max_passage_chars must be a positive integer")
        if not 0.0 <= float(self.max_quarantine_share) <= 1.0:
            raise DatasetError(f"dataset {self.name!r}: max_quarantine_share must be between 0 and 1")
        if self.budget is not None and self.budget not in ("quick", "standard", "thorough"):
            raise DatasetError(f"dataset {self.name!r}: budget must be quick, standard or thorough, not {self.budget!r}")

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, {}, "")}


@dataclass
class LoadedDataset:
    spec: DatasetSpec
    corpus: pl.DataFrame
    queries: pl.DataFrame | None = None
    qrels: pl.DataFrame | None = None
    quarantine: pl.DataFrame | None = None  # rows set aside: table, file, line, doc_id, reason

    @property
    def corpus_quarantined(self) -> int:
        """Corpus rows set aside (queries and judgments set aside are in ``quarantine`` too)."""
        if self.quarantine is None:
            return 0
        return self.quarantine.filter(pl.col("table") == "corpus").height

    @property
    def has_judgments(self) -> bool:
        return self.queries is not None and self.qrels is not None and self.qrels.height > 0


# --------------------------------------------------------------------------- registry


def datasets_file() -> Path:
    return Path(os.environ.get("RETRIEVER_FORGE_DATASETS", DEFAULT_DATASETS_FILE))


def load_registry(path: str | os.PathLike | None = None) -> dict[str, DatasetSpec]:
    """Read the named datasets. Relative paths in the file are relative to the file."""
    path = Path(path) if path else datasets_file()
    if not path.exists():
        return {"demo": DatasetSpec(name="demo", source="demo")}
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: not valid YAML: {e}") from e
    entries = raw.get("datasets", raw)
    if not isinstance(entries, dict):
        raise DatasetError(f"{path}: expected a mapping 'datasets: {{name: {{source: ...}}}}'")
    specs = {}
    for name, entry in entries.items():
        entry = dict(entry or {})
        for key in ("path", "corpus", "queries", "qrels"):
            if entry.get(key) and not _is_url(entry[key]):
                entry[key] = str((path.parent / os.path.expanduser(entry[key])).resolve())
        overrides = entry.pop("overrides", None)  # per-asset config defaults for this dataset
        if overrides:
            entry["extra"] = {**entry.get("extra", {}), "overrides": overrides}
        try:
            specs[str(name)] = DatasetSpec(name=str(name), **entry)
        except TypeError as e:
            raise DatasetError(f"{path}: dataset {name!r}: {e}") from e
    return specs


def _is_url(s: str) -> bool:
    return "://" in s


_ENTRY_RE = re.compile(r"^(?P<indent> *)(?P<name>[^\s#:][^:#]*?)\s*:")


def add_dataset(name: str, entry: dict, path: str | os.PathLike | None = None) -> DatasetSpec:
    """Add ``name`` with ``entry`` (``{"source": "beir", "path": ...}``) to the datasets file.

    The file is edited as text, so its comments and the other entries stay as they are; the
    result is parsed before it replaces the file, and a file that would not load is never
    written. Raises :class:`DatasetError` when the name exists already or is not allowed.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "datasets.yaml"
        >>> _ = f.write_text("# my datasets\\ndatasets:\\n  demo: {source: demo}\\n")
        >>> add_dataset("notes", {"source": "files", "corpus": "/data/notes.jsonl"}, f).corpus
        '/data/notes.jsonl'
        >>> sorted(load_registry(f)), f.read_text().startswith("# my datasets")
        (['demo', 'notes'], True)
        >>> remove_dataset("demo", f); sorted(load_registry(f))
        ['notes']
    """
    path = Path(path) if path else datasets_file()
    try:  # the name and the fields are valid before the file is touched
        DatasetSpec(name=name, **{k: v for k, v in entry.items() if k != "overrides"})
    except TypeError as e:
        raise DatasetError(f"{path}: dataset {name!r}: {e}") from e
    text = path.read_text() if path.exists() else ""
    registry = load_registry(path) if path.exists() else {}
    if name in registry:
        raise DatasetError(f"{path}: dataset {name!r} exists already (remove it first, or edit the file)")
    lines = text.splitlines(keepends=True)
    start, end, indent = _datasets_block(lines, path)
    if start is None:  # no datasets: block yet
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append("datasets:\n")
        start = end = len(lines)
        indent = "  "
    block = yaml.safe_dump({name: entry}, sort_keys=False, default_flow_style=False)
    new = [indent + line if line.strip() else line for line in block.splitlines(keepends=True)]
    if end > 0 and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    lines[end:end] = new
    specs = _replace_checked(path, "".join(lines))
    if name not in specs:
        raise DatasetError(f"{path}: could not add dataset {name!r} (the file's layout is not one this command edits)")
    return specs[name]


def remove_dataset(name: str, path: str | os.PathLike | None = None) -> None:
    """Remove ``name``'s entry (its lines, comments between other entries stay) from the datasets file."""
    path = Path(path) if path else datasets_file()
    if name not in load_registry(path):
        raise DatasetError(f"{path}: no dataset {name!r} to remove")
    lines = path.read_text().splitlines(keepends=True)
    start, end, indent = _datasets_block(lines, path)
    first = next((i for i in range(start or 0, end) if (m := _ENTRY_RE.match(lines[i])) and m["indent"] == indent
                  and m["name"].strip("'\"") == name), None)  # fmt: skip
    if first is None:
        raise DatasetError(f"{path}: dataset {name!r} is not written as a plain entry under 'datasets:'; edit the file by hand")
    last = first + 1
    while last < end and (not lines[last].strip() or _indent_of(lines[last]) > len(indent)):
        last += 1
    while last > first + 1 and not lines[last - 1].strip():
        last -= 1  # keep the blank lines that separate the next entry
    del lines[first:last]
    specs = _replace_checked(path, "".join(lines))
    if name in specs:
        raise DatasetError(f"{path}: could not remove dataset {name!r}; edit the file by hand")


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _datasets_block(lines: list[str], path: Path) -> tuple[int | None, int, str]:
    """(first line after ``datasets:``, end of its block, the entries' indentation)."""
    head = next((i for i, line in enumerate(lines) if re.match(r"^datasets\s*:\s*(#.*)?$", line.rstrip("\n"))), None)
    if head is None:
        if any(line.strip() and not line.lstrip().startswith("#") for line in lines):
            raise DatasetError(f"{path}: has no top-level 'datasets:' mapping; add entries by hand")
        return None, len(lines), "  "
    end, indent = len(lines), None
    for i in range(head + 1, len(lines)):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if _indent_of(line) == 0:
            end = i
            break
        indent = indent if indent is not None else " " * _indent_of(line)
    while end > head + 1 and (not lines[end - 1].strip() or (lines[end - 1].lstrip().startswith("#") and _indent_of(lines[end - 1]) == 0)):
        end -= 1  # a comment block before the next top-level key belongs to that key
    return head + 1, end, indent or "  "


def _replace_checked(path: Path, text: str) -> dict[str, DatasetSpec]:
    """Write ``text`` to ``path`` if it loads as a datasets file (atomically: readers see old or new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    try:
        specs = load_registry(tmp)
    except DatasetError:
        tmp.unlink()
        raise
    os.replace(tmp, path)
    return specs


# --------------------------------------------------------------------------- loading


def passage_text(title: str | None, text: str | None) -> str:
    """The text an encoder sees for a passage: ``title: text`` when a title exists."""
    title, text = (title or "").strip(), (text or "").strip()
    return f"{title}: {text}" if title and text else (title or text)


def passage_text_expr(title: str = "title", text: str = "text") -> pl.Expr:
    """:func:`retriever_forge.datasets.passage_text` as a polars expression (same result, vectorised).

    >>> pl.DataFrame({"title": ["T", ""], "text": ["body", "only"]}).select(passage_text_expr())["title"].to_list()
    ['T: body', 'only']
    """
    t = pl.col(title).fill_null("").str.strip_chars()
    x = pl.col(text).fill_null("").str.strip_chars()
    return pl.when((t != "") & (x != "")).then(pl.concat_str([t, pl.lit(": "), x])).when(t != "").then(t).otherwise(x)


def load_dataset(spec: DatasetSpec) -> LoadedDataset:
    """Load a dataset from its source; raises :class:`DatasetError` on bad input."""
    if spec.source == "beir":
        return _load_beir(spec)
    if spec.source == "files":
        return _load_files(spec)
    if spec.source == "ir_datasets":
        return _load_ir_datasets(spec)
    if spec.source == "demo":
        from retriever_forge.demo_corpus import build_demo_corpus

        return LoadedDataset(spec=spec, corpus=build_demo_corpus(max_passages=spec.max_documents or 400))
    raise DatasetError(f"dataset {spec.name!r}: unknown source {spec.source!r} (beir, files, ir_datasets, demo)")


def _load_beir(spec: DatasetSpec) -> LoadedDataset:
    if not spec.path:
        raise DatasetError(f"dataset {spec.name!r}: source 'beir' needs 'path' (a folder with corpus.jsonl)")
    root = Path(spec.path)
    corpus_file = root / "corpus.jsonl"
    if not corpus_file.exists():
        raise DatasetError(f"{corpus_file}: not found (a BEIR folder holds corpus.jsonl, queries.jsonl, qrels/)")
    corpus, quarantine = read_corpus(corpus_file, spec)
    queries = qrels = None
    qrels_file = root / "qrels" / f"{spec.split}.tsv"
    if (root / "queries.jsonl").exists() and qrels_file.exists():
        set_aside: list[dict] = []
        qrels = read_qrels(qrels_file)
        queries = read_queries(root / "queries.jsonl", set_aside if spec.on_bad_rows == "quarantine" else None)
        qrels = _check_qrels(qrels, queries, corpus, qrels_file, set_aside if spec.on_bad_rows == "quarantine" else None, set_aside)
        queries = queries.filter(pl.col("query_id").is_in(qrels["query_id"].unique().implode()))
        quarantine = pl.concat([quarantine, pl.DataFrame(set_aside, schema=QUARANTINE)])
    return LoadedDataset(spec=spec, corpus=corpus, queries=queries, qrels=qrels, quarantine=quarantine)


def _load_files(spec: DatasetSpec) -> LoadedDataset:
    if not spec.corpus:
        raise DatasetError(f"dataset {spec.name!r}: source 'files' needs 'corpus' (a .jsonl or .parquet file)")
    corpus, quarantine = read_corpus(Path(spec.corpus), spec)
    set_aside: list[dict] = []
    policy = set_aside if spec.on_bad_rows == "quarantine" else None
    queries = read_queries(Path(spec.queries), policy) if spec.queries else None
    qrels = read_qrels(Path(spec.qrels)) if spec.qrels else None
    if qrels is not None and queries is not None:
        qrels = _check_qrels(qrels, queries, corpus, Path(spec.qrels), policy, set_aside)
    if set_aside:
        quarantine = pl.concat([quarantine, pl.DataFrame(set_aside, schema=QUARANTINE)])
    return LoadedDataset(spec=spec, corpus=corpus, queries=queries, qrels=qrels, quarantine=quarantine)


def _bad_row(table: str, path: Path, lineno: int | None, doc_id: str | None, reason: str, quarantine: list[dict] | None) -> None:
    """Raise a :class:`DatasetError` for a bad row, or (``quarantine`` given) set the row aside."""
    if quarantine is None:
        where = f"{path}:{lineno}" if lineno is not None else str(path)
        raise DatasetError(f"{where}: {reason}")
    quarantine.append({"table": table, "file": str(path), "line": lineno, "doc_id": doc_id, "reason": reason})


def _read_jsonl(path: Path, quarantine: list[dict] | None = None, table: str = "corpus") -> list[tuple[int, dict]]:
    """Rows of a JSONL file with their line numbers; bad lines raise, or go to ``quarantine``."""
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                _bad_row(table, path, lineno, None, f"not valid UTF-8 ({e.reason} at byte {e.start})", quarantine)
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                _bad_row(table, path, lineno, None, f"malformed JSON: {e.msg} (column {e.colno})", quarantine)
                continue
            if not isinstance(obj, dict):
                _bad_row(table, path, lineno, None, f"expected a JSON object, got {type(obj).__name__}", quarantine)
                continue
            rows.append((lineno, obj))
    return rows


def read_corpus(path: Path, spec: DatasetSpec | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read a corpus file (.jsonl or .parquet) into (corpus, quarantine).

    Bad rows — malformed or non-UTF-8 lines, missing ids, duplicate ids (the first one wins),
    non-string text, passages over ``spec.max_passage_chars`` — raise a :class:`DatasetError`
    naming the file and line, or with ``spec.on_bad_rows == "quarantine"`` are set aside with the
    reason. Empty or whitespace-only passages are always set aside.
    """
    id_f = spec.id_field if spec else "_id"
    title_f = spec.title_field if spec else "title"
    text_f = spec.text_field if spec else "text"
    max_chars = spec.max_passage_chars if spec else DatasetSpec.max_passage_chars
    quarantined: list[dict] = []
    strict = None if spec is None or spec.on_bad_rows == "error" else quarantined
    if not path.exists():
        raise DatasetError(f"{path}: not found")
    if path.suffix == ".parquet":
        df = pl.read_parquet(path)
        if id_f not in df.columns and "doc_id" in df.columns:
            id_f = "doc_id"
        for col in (id_f, text_f):
            if col not in df.columns:
                raise DatasetError(f"{path}: no column {col!r} (columns: {df.columns})")
        rows = [(i + 2, {id_f: r[id_f], title_f: r.get(title_f), text_f: r[text_f]}) for i, r in enumerate(df.iter_rows(named=True))]
    else:
        rows = _read_jsonl(path, strict)
    ids, titles, texts = [], [], []
    seen: dict[str, int] = {}
    for lineno, obj in rows:
        doc_id = obj.get(id_f, obj.get("doc_id") if id_f == "_id" else None)
        if doc_id is None or str(doc_id).strip() == "":
            _bad_row("corpus", path, lineno, None, f"missing document id field {id_f!r}", strict)
            continue
        doc_id = str(doc_id)
        if doc_id in seen:
            _bad_row("corpus", path, lineno, doc_id, f"duplicate document id {doc_id!r} (first at line {seen[doc_id]})", strict)
            continue
        seen[doc_id] = lineno
        text = obj.get(text_f)
        title = obj.get(title_f) or ""
        if text is not None and not isinstance(text, str):
            _bad_row("corpus", path, lineno, doc_id, f"field {text_f!r} must be a string, got {type(text).__name__}", strict)
            continue
        title = str(title)
        if not (text or "").strip() and not title.strip():
            quarantined.append({"table": "corpus", "file": str(path), "line": lineno, "doc_id": doc_id, "reason": "empty passage"})
            continue
        size = len(text or "") + len(title)
        if size > max_chars:
            _bad_row("corpus", path, lineno, doc_id,
                     f"passage of {size} characters exceeds max_passage_chars={max_chars} "
                     "(raise max_passage_chars, or set on_bad_rows: quarantine to skip such rows)", strict)  # fmt: skip
            continue
        ids.append(doc_id)
        titles.append(title)
        texts.append(text or "")
    if not ids:
        raise DatasetError(f"{path}: no usable passages ({len(quarantined)} rows set aside)")
    corpus = pl.DataFrame({"doc_id": ids, "title": titles, "text": texts}, schema=schemas.CORPUS)
    quarantine = pl.DataFrame(quarantined, schema=QUARANTINE)
    return corpus, quarantine


def read_queries(path: Path, quarantine: list[dict] | None = None) -> pl.DataFrame:
    """Read queries; bad rows raise, or (``quarantine`` given) are set aside there."""
    if path.suffix == ".parquet":
        df = pl.read_parquet(path)
        id_col = "query_id" if "query_id" in df.columns else "_id"
        return df.select(pl.col(id_col).cast(pl.String).alias("query_id"), pl.col("text").cast(pl.String))
    ids, texts = [], []
    seen: set[str] = set()
    for lineno, obj in _read_jsonl(path, quarantine, table="queries"):
        qid = obj.get("_id", obj.get("query_id"))
        if qid is None:
            _bad_row("queries", path, lineno, None, "missing query id field '_id'", quarantine)
            continue
        if not isinstance(obj.get("text"), str):
            _bad_row("queries", path, lineno, None, f"query {qid!r} has no 'text' string", quarantine)
            continue
        if str(qid) in seen:
            _bad_row("queries", path, lineno, None, f"duplicate query id {str(qid)!r}", quarantine)
            continue
        seen.add(str(qid))
        ids.append(str(qid))
        texts.append(obj["text"])
    return pl.DataFrame({"query_id": ids, "text": texts}, schema=schemas.QUERIES)


def read_qrels(path: Path) -> pl.DataFrame:
    """Read qrels: BEIR TSV with header ``query-id corpus-id score``, TREC 4-column, or Parquet."""
    if not path.exists():
        raise DatasetError(f"{path}: not found")
    if path.suffix == ".parquet":
        return pl.read_parquet(path).select(
            pl.col("query_id").cast(pl.String), pl.col("doc_id").cast(pl.String), pl.col("relevance").cast(pl.Int64)
        )
    qids, dids, rels = [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if lineno == 1 and not parts[-1].lstrip("-").isdigit():
                continue  # header
            if len(parts) == 4:  # TREC: qid iter docid rel
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3:
                raise DatasetError(f"{path}:{lineno}: expected 'query-id corpus-id score', got {line.strip()!r}")
            try:
                rel = int(float(parts[2]))
            except ValueError as e:
                raise DatasetError(f"{path}:{lineno}: relevance {parts[2]!r} is not a number") from e
            qids.append(parts[0])
            dids.append(parts[1])
            rels.append(rel)
    return pl.DataFrame({"query_id": qids, "doc_id": dids, "relevance": rels}, schema=schemas.QRELS)


def _check_qrels(
    qrels: pl.DataFrame, queries: pl.DataFrame, corpus: pl.DataFrame, path: Path, quarantine: list[dict] | None, set_aside: list[dict]
) -> pl.DataFrame:
    """Judgments must name known queries (raise, or set the others aside under ``quarantine``).

    A judgment naming a document that is not in the corpus (missing, or quarantined as empty) is
    harmless: real collections have them, and no retriever can return such a document. Under
    either policy it is set aside in ``set_aside`` (counted and listed in the corpus metadata)
    and never fails the run.
    """
    unknown_q = qrels.filter(~pl.col("query_id").is_in(queries["query_id"].implode()))
    if quarantine is None and unknown_q.height:
        raise DatasetError(
            f"{path}: {unknown_q.height} judgments name queries missing from queries.jsonl, e.g. {unknown_q['query_id'][0]!r}"
        )
    for q, d in unknown_q.select("query_id", "doc_id").iter_rows():
        quarantine.append({"table": "qrels", "file": str(path), "line": None, "doc_id": d, "reason": f"judgment names unknown query {q!r}"})
    known_q = qrels.filter(pl.col("query_id").is_in(queries["query_id"].implode()))
    for q, d in known_q.filter(~pl.col("doc_id").is_in(corpus["doc_id"].implode())).select("query_id", "doc_id").iter_rows():
        set_aside.append(
            {"table": "qrels", "file": str(path), "line": None, "doc_id": d, "reason": f"judgment for query {q!r} names unknown document"}
        )
    return known_q.filter(pl.col("doc_id").is_in(corpus["doc_id"].implode()))


def _load_ir_datasets(spec: DatasetSpec) -> LoadedDataset:
    if not spec.id:
        raise DatasetError(f"dataset {spec.name!r}: source 'ir_datasets' needs 'id', e.g. beir/scifact/test")
    import ir_datasets

    try:
        ds = ir_datasets.load(spec.id)
    except KeyError as e:
        raise DatasetError(f"dataset {spec.name!r}: unknown ir_datasets id {spec.id!r}") from e
    hint = (
        f"could not read ir_datasets id {spec.id!r}: it is not in the local ir_datasets cache "
        f"({ir_datasets.util.home_path()}) and downloading it failed (offline?). Download it once on a "
        "machine with internet (`python -c \"import ir_datasets; ir_datasets.load('ID').docs_iter()\"`), "
        "or point the dataset at a local BEIR folder: {source: beir, path: /path/to/folder}"
    )
    try:
        with _fail_fast_network():
            docs = [(d.doc_id, getattr(d, "title", "") or "", getattr(d, "text", "") or "") for d in ds.docs_iter()]
            queries = qrels = None
            if ds.has_queries() and ds.has_qrels():
                q = [(x.query_id, getattr(x, "text", "")) for x in ds.queries_iter()]
                r = [(x.query_id, x.doc_id, int(x.relevance)) for x in ds.qrels_iter()]
                queries = pl.DataFrame(q, schema=schemas.QUERIES, orient="row")
                qrels = pl.DataFrame(r, schema=schemas.QRELS, orient="row")
    except Exception as e:  # noqa: BLE001 - any download failure becomes the same actionable error
        raise DatasetError(f"{hint} (cause: {type(e).__name__}: {e})") from e
    corpus = pl.DataFrame(docs, schema=schemas.CORPUS, orient="row").filter(
        (pl.col("text").str.strip_chars() != "") | (pl.col("title").str.strip_chars() != "")
    )
    if queries is not None:
        queries = queries.filter(pl.col("query_id").is_in(qrels["query_id"].unique().implode()))
    return LoadedDataset(spec=spec, corpus=corpus, queries=queries, qrels=qrels)


class _fail_fast_network:
    """Short socket timeout while ir_datasets may download, so offline runs fail in seconds."""

    def __enter__(self):
        import socket

        self._old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(10)

    def __exit__(self, *exc):
        import socket

        socket.setdefaulttimeout(self._old)
        return False
