"""Training batch orders: seeded shuffles and topic-aware (TAS) batches.

* :func:`shuffled_batches` - a plain shuffle, fixed by ``(seed, epoch)``.
* :class:`TopicBatcher` - TAS (Hofstätter et al. 2021, "Efficiently Teaching an Effective
  Dense Retriever with Balanced Topic Aware Sampling"): query embeddings are clustered once
  with seeded k-means, and every batch is drawn from a single cluster, so in-batch negatives
  share the query's topic and are harder than random ones. (TAS-*Balanced* also balances
  teacher-margin bins inside a cluster for pairwise distillation; with no teacher margins here
  the topic-aware half is what applies.)
* :func:`no_duplicate_positives` - reflows batches so that no two queries in a batch share a
  positive passage: with in-batch negatives, one query's positive would otherwise be pushed
  away from the other query as a (false) negative.

Every order depends only on ``(seed, epoch)``, never on global RNG state, so a resumed
training run replays exactly the batches an uninterrupted run would have seen.

Example:
    >>> shuffled_batches(5, batch_size=2, seed=0, epoch=0)
    [[2, 4], [3, 0], [1]]
    >>> no_duplicate_positives([[0, 1], [2, 3]], keys=["a", "a", "b", "c"])
    [[0, 2], [1, 3]]
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence

import numpy as np

log = logging.getLogger(__name__)


def _rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    # Independent, reproducible streams per (seed, epoch, purpose).
    return np.random.default_rng([seed, epoch, stream])


def shuffled_batches(n_examples: int, batch_size: int, seed: int = 0, epoch: int = 0) -> list[list[int]]:
    """Example indices shuffled by ``(seed, epoch)`` and cut into batches."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = _rng(seed, epoch).permutation(n_examples).tolist()
    return [order[i : i + batch_size] for i in range(0, n_examples, batch_size)]


def kmeans_topics(embeddings: np.ndarray, n_topics: int, seed: int = 0, niter: int = 20) -> np.ndarray:
    """Cluster id per row from seeded faiss k-means (spherical for normalised embeddings).

    >>> x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    >>> t = kmeans_topics(x, 2, seed=0); bool(t[0] == t[1] != t[2] == t[3])
    True
    """
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n_topics = max(1, min(n_topics, len(x)))
    if n_topics == 1:
        return np.zeros(len(x), dtype=np.int64)
    km = faiss.Kmeans(
        x.shape[1],
        n_topics,
        niter=niter,
        seed=seed,
        spherical=True,
        verbose=False,
        min_points_per_centroid=1,  # small toy sets: no warning, no subsampling surprises
        max_points_per_centroid=1 << 20,
    )
    km.train(x)
    _, assign = km.index.search(x, 1)
    return assign.ravel().astype(np.int64)


class TopicBatcher:
    """Topic-aware batches: each batch's queries come from one k-means cluster.

    The clustering is computed once (at construction); :meth:`batches` shuffles members
    inside each cluster and the order of batches per ``(seed, epoch)``. A cluster's last,
    partial batch is pooled with the other clusters' remainders into mixed batches, so batch
    sizes stay even; at most ``n_topics`` such remainders exist per epoch.

    >>> x = np.array([[1, 0]] * 4 + [[0, 1]] * 4, dtype=np.float32)
    >>> tb = TopicBatcher(x, batch_size=2, n_topics=2, seed=0)
    >>> all(len({int(tb.topics[i]) for i in b}) == 1 for b in tb.batches(epoch=0))
    True
    """

    def __init__(self, query_embeddings: np.ndarray, batch_size: int, n_topics: int, seed: int = 0):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.batch_size = batch_size
        self.seed = seed
        self.topics = kmeans_topics(query_embeddings, n_topics, seed=seed)
        self.members = [np.flatnonzero(self.topics == t) for t in np.unique(self.topics)]

    def batches(self, epoch: int = 0) -> list[list[int]]:
        rng = _rng(self.seed, epoch, stream=1)
        full, remainder = [], []
        for members in self.members:
            shuffled = rng.permutation(members).tolist()
            cut = len(shuffled) - len(shuffled) % self.batch_size
            full.extend(shuffled[i : i + self.batch_size] for i in range(0, cut, self.batch_size))
            remainder.extend(shuffled[cut:])
        mixed = [remainder[i : i + self.batch_size] for i in range(0, len(remainder), self.batch_size)]
        batches = full + mixed
        return [batches[i] for i in rng.permutation(len(batches))]


def no_duplicate_positives(batches: list[list[int]], keys: Sequence[Hashable]) -> list[list[int]]:
    """Reflow ``batches`` so no batch holds two examples with the same key (positive id).

    The examples are taken as one stream in batch order and refilled into batches of the
    original sizes: an example whose key is already in the batch being filled waits, and gets
    first call on the next batch; the next examples of the stream fill its place. What still
    waits at the end forms extra batches under the same rule. Every example appears once.
    """
    if not batches:
        return []
    sizes = [len(b) for b in batches]
    stream = iter(i for b in batches for i in b)
    out: list[list[int]] = []
    waiting: list[int] = []
    exhausted = False
    while waiting or not exhausted:
        target = sizes[len(out)] if len(out) < len(sizes) else max(sizes)
        current: list[int] = []
        seen: set = set()
        still_waiting: list[int] = []
        candidates = iter(waiting)
        while len(current) < target:
            i = next(candidates, None)
            if i is None:  # the waiting examples are used up: take from the stream
                i = next(stream, None)
                if i is None:
                    exhausted = True
                    break
            if keys[i] in seen:
                still_waiting.append(i)
            else:
                current.append(i)
                seen.add(keys[i])
        still_waiting.extend(candidates)  # waiting examples the full batch had no room for
        if current:
            out.append(current)
        waiting = still_waiting
    return out
