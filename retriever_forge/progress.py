"""Progress bars for the long steps (generation, judging, encoding, training), on when a CLI run asks.

``retriever-forge run`` sets ``RETRIEVER_FORGE_PROGRESS=1``; tests, the UI's runs and library use
stay silent. Bars go to stderr (tqdm: count, rate, ETA).

Example:
    >>> from retriever_forge.progress import progress_bar
    >>> with progress_bar(3, "demo", enabled=False) as bar:
    ...     bar.update(3)
"""

from __future__ import annotations

import os
import sys

ENV = "RETRIEVER_FORGE_PROGRESS"
MIN_ITEMS = 64  # below this a bar is noise: it would finish before it is read


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress_enabled() -> bool:
    return os.environ.get(ENV) == "1"


_open_bars = 0  # bars showing now: an inner bar (a backend call inside the LLM cache's) stays silent


class _Bar:
    """A tqdm bar that, while open, silences the bars opened inside it."""

    def __init__(self, bar):
        global _open_bars
        self._bar = bar
        _open_bars += 1

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def close(self) -> None:
        global _open_bars
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            _open_bars -= 1

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool | None = None, min_items: int = MIN_ITEMS):
    """A tqdm bar when progress is enabled, ``total`` is worth one and no other bar is open,
    else a no-op with the same methods.

    The LLM cache sends prompts to the backend in groups of 32: its bar counts the whole call,
    and each group's own bar (too small, and nested) stays silent. ``min_items``: the smallest
    total worth a bar; lower it for slow items (a training step takes seconds).
    """
    if not (progress_enabled() if enabled is None else enabled) or total < min_items or _open_bars:
        return _NoBar()
    from tqdm.auto import tqdm

    return _Bar(tqdm(total=total, desc=f"  {desc}", unit=unit, file=sys.stderr, mininterval=1.0, leave=False, dynamic_ncols=True))
