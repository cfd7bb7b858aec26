"""Synthetic query generation (InPars / Promptagator / GPL style) and its filters.

For each sampled passage the LLM writes one query per requested style (question, keywords,
claim), each from its own versioned few-shot template. Every raw output is kept with the
filter that dropped it (if any), so the table doubles as an audit log:

* ``unparseable`` — nothing usable in the output;
* ``too_short`` / ``too_long`` — outside ``min_words``..``max_words``;
* ``copy`` — a near-verbatim span of the passage (the model copied instead of asking);
* ``duplicate`` — same normalised text as an earlier query;
* ``round_trip`` — Promptagator's consistency filter: the source passage is not in the base
  retriever's top-k for the query (applied by :func:`round_trip_filter`).

Example:
    >>> from retriever_forge.querygen import clean_query, near_copy
    >>> clean_query('Query: "What does insulin do?"\\nExample 3')
    'What does insulin do?'
    >>> near_copy("the quick brown fox jumps over the lazy dog", "Yes, the quick brown fox jumps over the lazy dog today.")
    True
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from retriever_forge import schemas
from retriever_forge.datasets import passage_text, passage_text_expr
from retriever_forge.hashing import hash_text
from retriever_forge.llm.base import LLMBackend, SamplingParams
from retriever_forge.prompts import PromptTemplate, load_template

log = logging.getLogger(__name__)

STYLE_TEMPLATES = {
    "question": "queries/inpars_question_v1",
    "keywords": "queries/inpars_keywords_v1",
    "claim": "queries/inpars_claim_v1",
}


@dataclass
class QueryGenerationConfig:
    """How synthetic queries are written and filtered (:func:`generate_synthetic_queries`).

    Args:
        documents_to_sample: Passages to write queries for (null: all).
        min_passage_words: Passages shorter than this (title included) get no queries: a bare title such as
            "PSIF (Algorithm 147)" gives a small model nothing to ask about. They stay in the corpus as
            retrieval targets and negatives.
        queries_per_document: Queries per passage; styles are used round-robin.
        styles: Query styles: question, keywords, claim (or a style named in templates).
        instruction: Optional corpus-specific instruction added to the prompt.
        templates: Per style, a template id or a path to your own .txt prompt.
        temperature: Sampling temperature (0: greedy decoding).
        top_p: Nucleus sampling mass.
        max_new_tokens: Tokens generated per query.
        max_passage_words: Passage words shown to the LLM.
        min_words: Queries with fewer words are dropped (too_short).
        max_words: Queries with more words are dropped (too_long).
        round_trip_k: Promptagator round-trip filter depth (null: off).
        crop_queries_per_document: Corpus-only pseudo-queries: random word spans per passage, positive = the
            passage (Contriever-style, style "crop"; 0: off).
        crop_words: Shortest and longest span of a cropped pseudo-query, in words.
        dev_fraction: Share of passages whose queries form the dev split.
        test_fraction: Share of passages held out for a synthetic test split (>0 only for corpora without
            human judgments).
        seed: Seeds sampling, splits and cropping.
    """

    documents_to_sample: int | None = 200
    min_passage_words: int = 0
    queries_per_document: int = 1
    styles: tuple[str, ...] = ("question", "keywords", "claim")
    instruction: str = ""
    templates: dict[str, str] = field(default_factory=dict)
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    max_passage_words: int = 180
    min_words: int = 2
    max_words: int = 32
    round_trip_k: int | None = 10
    crop_queries_per_document: int = 0
    crop_words: tuple[int, int] = (4, 12)
    dev_fraction: float = 0.1
    test_fraction: float = 0.0
    seed: int = 0


# --------------------------------------------------------------------------- cleaning / filters

_PREFIX = re.compile(r"^\s*(?:\d+[.)]\s*|[-*•]\s*|(?:query|question|search query|claim|keywords?)\s*[:\-]\s*)+", re.I)
_WORD = re.compile(r"\w+")


def clean_query(raw: str) -> str:
    """First non-empty line of the output, without labels, numbering and wrapping quotes."""
    for line in raw.strip().splitlines():
        line = _PREFIX.sub("", line).strip().strip("\"'`“”‘’ ").strip()
        if line and not line.lower().startswith(("example", "passage:", "now the passage")):
            return re.sub(r"\s+", " ", line)
        if line:
            return ""  # the model started a new example instead of answering
    return ""


def normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def near_copy(query: str, passage: str, min_words: int = 6, min_share: float = 0.8) -> bool:
    """True when most of the query is one contiguous span of the passage."""
    q, p = normalise(query).split(), normalise(passage).split()
    if len(q) < min_words:
        return False
    match = difflib.SequenceMatcher(a=q, b=p, autojunk=False).find_longest_match(0, len(q), 0, len(p))
    return match.size / len(q) >= min_share


def drop_reason(query: str, passage: str, config: QueryGenerationConfig) -> str | None:
    if not query:
        return "unparseable"
    n = len(query.split())
    if n < config.min_words:
        return "too_short"
    if n > config.max_words:
        return "too_long"
    if near_copy(query, passage):
        return "copy"
    return None


def _split_of(doc_id: str, config: QueryGenerationConfig) -> str:
    # Split by source passage (not by query) so a passage's queries never straddle splits.
    u = int(hash_text(f"{config.seed}:{doc_id}")[:8], 16) / 0xFFFFFFFF
    if u < config.test_fraction:
        return "test"
    if u < config.test_fraction + config.dev_fraction:
        return "dev"
    return "train"


# --------------------------------------------------------------------------- generation


def eligible_passages(corpus: pl.DataFrame, min_words: int) -> tuple[pl.DataFrame, int]:
    """Passages of at least ``min_words`` words (title included), and the threshold applied.

    A corpus of short passages (fewer than a quarter reach ``min_words``) is not left without
    queries: the threshold drops to the length three quarters of its passages reach.

    >>> corpus = pl.DataFrame({"doc_id": ["a", "b", "c"], "title": ["T", "", "Short"], "text": ["one two three", "four", ""]})
    >>> eligible_passages(corpus, 2)[0]["doc_id"].to_list()
    ['a']
    >>> eligible_passages(corpus, 20)[1]
    1
    """
    if min_words <= 0:
        return corpus, 0
    words = corpus.select(passage_text_expr().str.count_matches(r"\S+").alias("n"))["n"]
    if int((words >= min_words).sum()) < 0.25 * corpus.height:
        min_words = max(1, min(min_words, int(words.quantile(0.25, interpolation="lower") or 1)))
    return corpus.filter(words >= min_words), min_words


def sample_documents(corpus: pl.DataFrame, n: int | None, seed: int, min_words: int = 0) -> pl.DataFrame:
    """``n`` passages (all when ``None`` or fewer are eligible) of at least ``min_words`` words
    (see :func:`eligible_passages`), drawn with ``seed``.

    >>> corpus = pl.DataFrame({"doc_id": ["a", "b", "c"], "title": ["T", "", "Short"], "text": ["one two three", "four", ""]})
    >>> sample_documents(corpus, None, 0, min_words=2)["doc_id"].to_list()
    ['a']
    """
    corpus, _ = eligible_passages(corpus, min_words)
    if n is None or n >= corpus.height:
        return corpus
    return corpus.sample(n=n, seed=seed, shuffle=False).sort("doc_id")


def style_templates(config: QueryGenerationConfig) -> dict[str, PromptTemplate]:
    """The prompt template of each requested style (bundled, or the user's override)."""
    overrides = config.templates
    unknown = [s for s in config.styles if s not in STYLE_TEMPLATES and s not in overrides]
    if unknown or not config.styles:
        raise ValueError(f"unknown query styles {unknown or config.styles}; known: {sorted(STYLE_TEMPLATES)} (or give a template)")
    return {s: load_template(overrides.get(s, STYLE_TEMPLATES.get(s, ""))) for s in config.styles}


def generate_synthetic_queries(
    corpus: pl.DataFrame,
    llm: LLMBackend,
    config: QueryGenerationConfig,
    progress: Callable[[str], None] | None = None,
    completion_llm: LLMBackend | None = None,
) -> pl.DataFrame:
    """Generate, clean and filter synthetic queries; returns :data:`schemas.SYNTHETIC_QUERIES` rows.

    ``llm`` serves chat-format templates and ``completion_llm`` (the same model without its chat
    template) serves completion-format ones such as the bundled InPars prompts.
    Rows dropped by a filter stay in the table with ``dropped_by`` set; kept rows have it null.
    The round-trip filter needs an encoder and is applied separately by :func:`round_trip_filter`.
    """
    templates = style_templates(config)
    styles = list(templates)
    params = SamplingParams(
        temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens, seed=config.seed, stop=("\n",)
    )
    docs = sample_documents(corpus, config.documents_to_sample, config.seed, config.min_passage_words)
    if docs.height == 0:
        raise ValueError(f"no passage has at least {config.min_passage_words} words (min_passage_words) to write queries for")
    instruction = f"{config.instruction.strip()}\n\n" if config.instruction.strip() else ""
    jobs = []
    for doc in docs.iter_rows(named=True):
        passage = passage_text(doc["title"], doc["text"])
        short = " ".join(passage.split()[: config.max_passage_words])
        for j in range(config.queries_per_document):
            style = styles[j % len(styles)]
            jobs.append((doc["doc_id"], passage, style, templates[style].render(passage=short, instruction=instruction)))
    model = llm if llm is not None else completion_llm  # the same weights either way
    if progress:
        progress(f"generating {len(jobs)} queries for {docs.height} passages with {model.model_id}")
    outputs: list = [None] * len(jobs)
    # One call per style: its prompts share the whole few-shot template, which the backends
    # compute once per batch (transformers) or keep in their prefix cache (vLLM).
    for style in styles:
        todo = [i for i, job in enumerate(jobs) if job[2] == style]
        if not todo:
            continue
        backend = llm if templates[style].chat else completion_llm
        if backend is None:
            raise ValueError("completion-format templates need completion_llm (the model without its chat template)")
        for i, out in zip(todo, backend.generate([jobs[i][3] for i in todo], params), strict=True):
            outputs[i] = out
    rows, seen = [], set()
    sampling = params.cache_key()
    for doc_id, passage, span in crop_spans(docs, config):
        jobs.append((doc_id, passage, "crop", None))
        outputs.append(span)
    crop = {"id": "corpus/crop_v1", "hash": hash_text(f"crop:{config.crop_words}")}
    for i, ((doc_id, passage, style, _), out) in enumerate(zip(jobs, outputs, strict=True)):
        is_crop = style == "crop"
        text = out if is_crop else clean_query(out.text)
        reason = None if is_crop else drop_reason(text, passage, config)  # a crop is a copy by design
        key = normalise(text)
        if reason is None and key in seen:
            reason = "duplicate"
        seen.add(key)
        rows.append(
            {
                "query_id": f"synq-{hash_text(f'{doc_id}|{style}|{i}|{config.seed}')[:12]}",
                "doc_id": doc_id,
                "text": text,
                "style": style,
                "template_id": crop["id"] if is_crop else templates[style].id,
                "template_hash": crop["hash"] if is_crop else templates[style].hash,
                "model_id": "corpus" if is_crop else model.model_id,
                "model_hash": "0" * 64 if is_crop else model.weights_hash,
                "sampling": "crop" if is_crop else sampling,
                "seed": config.seed,
                "raw_output": out if is_crop else out.text,
                "dropped_by": reason,
                "split": _split_of(doc_id, config),
            }
        )
    return pl.DataFrame(rows, schema=schemas.SYNTHETIC_QUERIES)


def crop_spans(docs: pl.DataFrame, config: QueryGenerationConfig) -> list[tuple[str, str, str]]:
    """(doc_id, passage, span): ``crop_queries_per_document`` random word spans of each passage.

    Contriever (Izacard et al. 2022) learns from two independent crops of one document; here one
    crop is the query and the passage is its positive, so the signal needs no LLM at all. Spans
    are ``crop_words`` long (fewer for short passages), drawn with the config's seed.

    >>> docs = pl.DataFrame({"doc_id": ["a"], "title": [""], "text": ["one two three four five six seven eight"]})
    >>> cfg = QueryGenerationConfig(crop_queries_per_document=2, crop_words=(3, 3))
    >>> [len(span.split()) for _, _, span in crop_spans(docs, cfg)]
    [3, 3]
    >>> all(span in passage for _, passage, span in crop_spans(docs, cfg))
    True
    """
    if config.crop_queries_per_document <= 0:
        return []
    rng = np.random.default_rng(config.seed)
    lo, hi = config.crop_words
    out = []
    for doc in docs.iter_rows(named=True):
        passage = passage_text(doc["title"], doc["text"])
        words = passage.split()
        for _ in range(config.crop_queries_per_document):
            n = min(len(words), int(rng.integers(lo, hi + 1)))
            start = int(rng.integers(0, len(words) - n + 1))
            out.append((doc["doc_id"], passage, " ".join(words[start : start + n])))
    return out


def round_trip_filter(
    queries: pl.DataFrame,
    encode: Callable[[list[str]], np.ndarray],
    corpus_embeddings: np.ndarray,
    doc_ids: list[str],
    k: int,
) -> pl.DataFrame:
    """Mark kept queries whose source passage is not in the top-``k`` for them (Promptagator).

    Args:
        queries: The generated queries; only the kept rows (``dropped_by`` null) are tested.
        encode: Embeds query texts with the encoder that embedded the corpus.
        corpus_embeddings: The corpus, in the order of ``doc_ids``.
        doc_ids: The corpus's document ids.
        k: Retrieval depth at which the source passage must appear.

    Returns:
        ``queries`` with ``dropped_by`` set to ``round_trip`` where the source was not retrieved.
    """
    from retriever_forge.search import exact_search

    kept = queries.filter(pl.col("dropped_by").is_null())
    if kept.height == 0:
        return queries
    _, idx = exact_search(encode(kept["text"].to_list()), corpus_embeddings, k=min(k, len(doc_ids)))
    position = {d: i for i, d in enumerate(doc_ids)}
    source = np.array([position[d] for d in kept["doc_id"]])
    hit = (idx == source[:, None]).any(axis=1)
    failed = set(kept.filter(pl.Series(~hit))["query_id"].to_list())
    return queries.with_columns(
        pl.when(pl.col("query_id").is_in(list(failed))).then(pl.lit("round_trip")).otherwise(pl.col("dropped_by")).alias("dropped_by")
    )


def generation_summary(queries: pl.DataFrame) -> dict:
    """Counts for metadata: kept, dropped per filter, per split."""
    dropped = queries.filter(pl.col("dropped_by").is_not_null()).group_by("dropped_by").len().sort("dropped_by")
    kept = queries.filter(pl.col("dropped_by").is_null())
    return {
        "generated": queries.height,
        "kept": kept.height,
        "dropped": {r["dropped_by"]: r["len"] for r in dropped.iter_rows(named=True)},
        "splits": {r["split"]: r["len"] for r in kept.group_by("split").len().sort("split").iter_rows(named=True)},
        "unparseable_share": float((queries["dropped_by"] == "unparseable").sum() / max(queries.height, 1)),
    }
