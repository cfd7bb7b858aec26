"""Lexical retrieval: the one BM25 (``bm25s``), used by the benchmark, serving, fusion and mining.

One analyser for every use: lower-cased word tokens of two or more characters, English
stopwords removed, English Snowball stemming (PyStemmer). ``bench/bm25_analysers.py`` chose it
by measurement: on cacm and msmarco-5k stemming scores higher nDCG@10 and Recall@100 than the
same analyser without it, and it is the analyser the BM25 rows in bench/README.md were scored with.
Runs are BEIR's ``{query_id: {doc_id: score}}``; the dense side is :mod:`retriever_forge.search`.

Example:
    >>> bm = BM25Index(["a", "b"], ["binary search trees", "matrix inversion methods"])
    >>> [list(hits) for hits in bm.search(["inverting a matrix", "the"], 1)]
    [['b'], []]
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from retriever_forge.datasets import passage_text
from retriever_forge.search import Run

STOPWORDS = "en"


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """The analyser: each text's terms as BM25 indexes and queries them.

    >>> tokenize(["Sorting the lists", "the of and"])
    [['sort', 'list'], []]
    """
    import bm25s
    import Stemmer

    return bm25s.tokenize(list(texts), stopwords=STOPWORDS, stemmer=Stemmer.Stemmer("english"), return_ids=False, show_progress=False)


class BM25Index:
    """A BM25 index over passages.

    Args:
        doc_ids: the id of each passage.
        texts: the passages' texts (title and body joined as :func:`passage_text` does).
    """

    def __init__(self, doc_ids: Sequence[str], texts: Sequence[str]):
        import bm25s

        self.doc_ids = list(doc_ids)
        self.retriever = bm25s.BM25()
        self.retriever.index(tokenize(texts), show_progress=False)

    def search(self, query_texts: Sequence[str], k: int) -> list[dict[str, float]]:
        """Each query's top-``k`` passages, best first, as ``{doc_id: score}``.

        Passages sharing no term with the query score 0 and are left out, so a query may get
        fewer than ``k`` (none when all its words are stopwords).
        """
        k = min(k, len(self.doc_ids))
        if not query_texts or k == 0:
            return [{} for _ in query_texts]
        idx, scores = self.retriever.retrieve(tokenize(query_texts), k=k, show_progress=False)
        return [
            {self.doc_ids[int(j)]: float(s) for j, s in zip(row, srow, strict=True) if s > 0} for row, srow in zip(idx, scores, strict=True)
        ]


def bm25_run(corpus: pl.DataFrame, queries: pl.DataFrame, k: int = 100) -> Run:
    """The BM25 run of ``queries`` (``query_id, text``) over ``corpus`` (``doc_id, title, text``).

    >>> corpus = pl.DataFrame({"doc_id": ["a", "b"], "title": ["", ""], "text": ["graph search", "sorting"]})
    >>> list(bm25_run(corpus, pl.DataFrame({"query_id": ["q"], "text": ["searching graphs"]}))["q"])
    ['a']
    """
    texts = [passage_text(t, x) for t, x in zip(corpus["title"], corpus["text"], strict=True)]
    hits = BM25Index(corpus["doc_id"].to_list(), texts).search(queries["text"].to_list(), k)
    return dict(zip(queries["query_id"].to_list(), hits, strict=True))
