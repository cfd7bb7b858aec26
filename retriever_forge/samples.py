"""Small, readable samples of big tables for the UI: a few rows from every stratum, with text.

A sample of the first rows shows one style of one passage; a stratified one shows every
style, split and filter outcome side by side, the passage it came from and why it was dropped.

Example:
    >>> import polars as pl
    >>> from retriever_forge.samples import stratified_sample
    >>> df = pl.DataFrame({"style": ["a"] * 5 + ["b"] * 5, "n": range(10)})
    >>> stratified_sample(df, ["style"], per_group=2)["style"].to_list()
    ['a', 'a', 'b', 'b']
"""

from __future__ import annotations

import polars as pl

SNIPPET_CHARS = 160

# Hard-negative filter names, in words (the candidates table stores the short name).
NEGATIVE_FILTERS = {
    None: "a hard negative for training",
    "margin": "scored too close to the positive (likely an unlabelled positive)",
    "judge": "the LLM judge graded it relevant (a false negative)",
    "guide": "the guide model ranks it above the positive",
    "window": "outside the mining rank window",
    "positive": "it is the query's own positive",
    "surplus": "beyond the negatives needed per query",
}


def snippet(text: str | None, chars: int = SNIPPET_CHARS) -> str:
    """Whitespace-collapsed text cut at a word boundary, with an ellipsis when cut.

    Example:
        >>> snippet("one  two three four", 10)
        'one two…'
    """
    text = " ".join((text or "").split())
    return text if len(text) <= chars else text[: chars - 1].rsplit(" ", 1)[0] + "…"


def stratified_sample(df: pl.DataFrame, by: list[str], per_group: int = 2, seed: int = 0) -> pl.DataFrame:
    """Up to ``per_group`` rows of each combination of ``by`` (nulls are a stratum), seeded, strata sorted."""
    if df.height == 0:
        return df
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=seed).with_row_index("_order")
    picked = shuffled.with_columns(pl.int_range(pl.len()).over(by).alias("_n")).filter(pl.col("_n") < per_group)
    return picked.sort([*by, "_order"], nulls_last=True).drop("_order", "_n")
