"""Small PNG charts (matplotlib, no display) for the Dagster UI, embedded in Markdown metadata.

The UI renders Markdown metadata, images included; a chart travels as a ``data:`` URI so it
needs no file server and stays with the materialization event.

Example:
    >>> from retriever_forge.charts import line_chart, markdown_image
    >>> png = line_chart({"loss": ([0, 1, 2], [1.0, 0.6, 0.5])}, title="loss", xlabel="step")
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n", markdown_image(png, "loss").startswith("![loss](data:image/png;base64,")
    (True, True)
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

SIZE = (6.0, 2.6)  # inches; at 80 dpi a chart is ~480x210 px, a few tens of KB
DPI = 80


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=SIZE, dpi=DPI)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def line_chart(series: dict[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "", xlabel: str = "",
               ylabel: str = "", secondary: dict[str, tuple[Sequence[float], Sequence[float]]] | None = None) -> bytes:  # fmt: skip
    """Lines ``{label: (x, y)}``; ``secondary`` ones on a right-hand axis (e.g. a dev metric beside the loss)."""
    plt, fig, ax = _figure()
    for label, (x, y) in series.items():
        ax.plot(list(x), list(y), label=label, linewidth=1.2)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    handles, labels = ax.get_legend_handles_labels()
    if secondary:
        ax2 = ax.twinx()
        for label, (x, y) in secondary.items():
            ax2.plot(list(x), list(y), label=label, color="tab:orange", marker="o", markersize=3, linewidth=1.2)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if labels:
        ax.legend(handles, labels, loc="best", fontsize=8)
    return _png(plt, fig)


def bar_chart(labels: Sequence[str], values: Sequence[float], *, title: str = "", ylabel: str = "", signed: bool = False) -> bytes:
    """Bars in the given order; ``signed`` colours gains green and losses red."""
    plt, fig, ax = _figure()
    colors = [("tab:green" if v > 0 else "tab:red" if v < 0 else "tab:gray") for v in values] if signed else None
    ax.bar(range(len(values)), list(values), color=colors)
    if len(labels) <= 20:
        ax.set_xticks(range(len(labels)), list(labels), fontsize=7, rotation=45 if len(labels) > 8 else 0)
    else:
        ax.set_xticks([])
    if signed:
        ax.axhline(0, color="black", linewidth=0.6)
    ax.set(title=title, ylabel=ylabel)
    return _png(plt, fig)


def markdown_image(png: bytes, alt: str) -> str:
    """A Markdown image carrying the PNG inline."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
