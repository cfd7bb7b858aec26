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


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool | None = None):
    """A tqdm bar when progress is enabled and ``total`` is worth one, else a no-op with the same methods."""
    if not (progress_enabled() if enabled is None else enabled) or total < MIN_ITEMS:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"  {desc}", unit=unit, file=sys.stderr, mininterval=1.0, leave=False, dynamic_ncols=True)
