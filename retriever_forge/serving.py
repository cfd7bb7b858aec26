"""Search what a run built: the latest corpus, encoder, FAISS index and hybrid fusion of a dataset.

Systems: ``fine-tuned`` (the corpus index), ``base`` (the base encoder, exact search over the
corpus embedded now), ``bm25`` (the benchmark's BM25) and ``hybrid`` (BM25 fused with the
fine-tuned encoder by the method stored with the index, as scored on the benchmark).

Example:
    >>> from retriever_forge.serving import SYSTEMS
    >>> SYSTEMS
    ('fine-tuned', 'base', 'bm25', 'hybrid')
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import polars as pl

from retriever_forge.artifacts import ArtifactStore, read_pointer
from retriever_forge.datasets import passage_text
from retriever_forge.encoding import DEFAULT_ENCODER, encode, encode_queries, load_encoder
from retriever_forge.fusion import fuse, ranked
from retriever_forge.indexing import load_corpus_index, read_fusion
from retriever_forge.lexical import bm25_run
from retriever_forge.samples import snippet
from retriever_forge.search import dense_run

SYSTEMS = ("fine-tuned", "base", "bm25", "hybrid")
SNIPPET_CHARS = 200
# The most downstream first, so the error names what the user's run has not reached.
_NEEDS = {"fine-tuned": ("corpus_index", "fine_tuned_encoder", "corpus"), "base": ("corpus",), "bm25": ("corpus",),
          "hybrid": ("corpus_index", "fine_tuned_encoder", "corpus")}  # fmt: skip


class MissingArtifact(LookupError):
    """A search needs an artifact the dataset has not materialized yet."""


@dataclass(frozen=True)
class Hit:
    rank: int
    doc_id: str
    score: float
    title: str
    snippet: str


def search(home: str | os.PathLike, dataset: str, query: str, system: str = "fine-tuned", k: int = 10, depth: int = 100,
           device: str | None = None) -> list[Hit]:  # fmt: skip
    """Ranked passages for ``query`` from the latest artifacts of ``dataset`` in the store at ``home``.

    Raises:
        MissingArtifact: naming the asset that is missing and the command that builds it.
        ValueError: an unknown system, or an empty query.
    """
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; choose one of {', '.join(SYSTEMS)}")
    if not query.strip():
        raise ValueError("empty query")
    refs = {}
    for asset in _NEEDS[system]:
        try:
            refs[asset] = read_pointer(home, asset, dataset)
        except KeyError:
            raise MissingArtifact(
                f"no {asset} for dataset {dataset!r} in {home}: run `retriever-forge run --dataset {dataset}` first"
            ) from None
    store = ArtifactStore(home)
    corpus = store.read_table(refs["corpus"])
    queries = pl.DataFrame({"query_id": ["q"], "text": [query]})
    runs = {}
    if system in ("bm25", "hybrid"):
        runs["bm25"] = bm25_run(corpus, queries, k=depth)
    fusion = {}
    if system in ("fine-tuned", "hybrid"):
        index_dir = store.local_path(refs["corpus_index"])
        tuned = load_encoder(str(store.local_path(refs["fine_tuned_encoder"])), device=device)
        index = load_corpus_index(index_dir)
        runs["fine-tuned"] = dense_run(encode_queries(tuned, [query]), index.index, ["q"], index.doc_ids, k=depth)
        fusion = read_fusion(index_dir)
    if system == "base":
        base = load_encoder(DEFAULT_ENCODER, device=device)
        texts = [passage_text(t, x) for t, x in zip(corpus["title"], corpus["text"], strict=True)]
        runs["base"] = dense_run(encode_queries(base, [query]), np.asarray(encode(base, texts)), ["q"], corpus["doc_id"].to_list(), k=depth)
    if system == "hybrid":
        if "hybrid" not in fusion:
            raise MissingArtifact(f"the corpus_index of dataset {dataset!r} has no hybrid fusion (built before hybrids): "
                                  f"run `retriever-forge run --dataset {dataset}` again")  # fmt: skip
        runs["hybrid"] = fuse([runs["bm25"], runs["fine-tuned"]], fusion["hybrid"]["method"], fusion["hybrid"]["params"], depth)
    scores = runs[system].get("q", {})
    rows = {d: (t, x) for d, t, x in corpus.filter(pl.col("doc_id").is_in(ranked(scores, k))).select("doc_id", "title", "text").iter_rows()}
    return [Hit(rank=i, doc_id=d, score=round(scores[d], 4), title=rows[d][0] or "", snippet=snippet(rows[d][1], SNIPPET_CHARS))
            for i, d in enumerate(ranked(scores, k), start=1)]  # fmt: skip


def format_hits(hits: list[Hit]) -> str:
    """Plain text for a terminal: rank, id, score and title, then an indented snippet."""
    if not hits:
        return "no results"
    return "\n".join(f"{h.rank:>3}. {h.doc_id}  {h.score:.4f}  {h.title}\n     {h.snippet}" for h in hits)
