"""Batch orders: seeded, topic-pure (TAS), and free of duplicate positives."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from retriever_forge.batching import TopicBatcher, kmeans_topics, no_duplicate_positives, shuffled_batches


def clustered(n_per: int = 12, centres: int = 4, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points tightly around ``centres`` orthogonal directions; returns (points, true cluster)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(centres), n_per)
    x = np.eye(dim, dtype=np.float32)[labels] + 0.05 * rng.normal(size=(len(labels), dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(len(labels))  # so clusters are not contiguous row ranges
    return x[perm], labels[perm]


def flatten(batches):
    return [i for b in batches for i in b]


def test_shuffled_batches_cover_everything_once_and_are_seeded():
    a = shuffled_batches(10, 3, seed=1, epoch=0)
    assert sorted(flatten(a)) == list(range(10)) and [len(b) for b in a] == [3, 3, 3, 1]
    assert a == shuffled_batches(10, 3, seed=1, epoch=0)
    assert a != shuffled_batches(10, 3, seed=1, epoch=1)
    assert a != shuffled_batches(10, 3, seed=2, epoch=0)


def test_kmeans_topics_recovers_planted_clusters_deterministically():
    x, truth = clustered()
    topics = kmeans_topics(x, 4, seed=0)
    # Each found topic is exactly one planted cluster (a relabelling).
    pairs = set(zip(topics.tolist(), truth.tolist(), strict=True))
    assert len(pairs) == 4 and len({t for t, _ in pairs}) == 4
    assert np.array_equal(topics, kmeans_topics(x, 4, seed=0))
    assert kmeans_topics(x[:3], 10).max() < 3  # never more topics than points


def test_topic_batches_are_single_topic_and_seeded():
    x, _ = clustered(n_per=12)
    tb = TopicBatcher(x, batch_size=4, n_topics=4, seed=3)
    batches = tb.batches(epoch=0)
    assert sorted(flatten(batches)) == list(range(48))
    assert all(len(b) == 4 and len({int(tb.topics[i]) for i in b}) == 1 for b in batches)
    assert batches == TopicBatcher(x, batch_size=4, n_topics=4, seed=3).batches(epoch=0)
    assert batches != tb.batches(epoch=1)


def test_topic_remainders_are_pooled_into_mixed_batches():
    x, _ = clustered(n_per=5)  # 4 topics x 5 points, batch 4: one leftover per topic
    tb = TopicBatcher(x, batch_size=4, n_topics=4, seed=0)
    batches = tb.batches(epoch=0)
    assert sorted(flatten(batches)) == list(range(20)) and all(len(b) == 4 for b in batches)
    mixed = [b for b in batches if len({int(tb.topics[i]) for i in b}) > 1]
    assert len(mixed) == 1 and len({int(tb.topics[i]) for i in mixed[0]}) == 4


def test_no_duplicate_positives_keeps_every_example_once():
    keys = ["a", "a", "a", "b", "c", "d", "e", "f"]
    batches = [[0, 1, 2, 3], [4, 5, 6, 7]]
    out = no_duplicate_positives(batches, keys)
    assert sorted(flatten(out)) == list(range(8))
    assert all(len({keys[i] for i in b}) == len(b) for b in out)
    assert out == [[0, 3, 4, 5], [1, 6, 7], [2]]  # waiting examples get first call on the next batch


def test_no_duplicate_positives_is_identity_without_duplicates():
    batches = shuffled_batches(20, 6, seed=0)
    assert no_duplicate_positives(batches, list(range(20))) == batches


@pytest.mark.parametrize("seed", range(5))
def test_no_duplicate_positives_random(seed):
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 15, size=60).tolist()  # many repeats
    out = no_duplicate_positives(shuffled_batches(60, 8, seed=seed), keys)
    assert Counter(flatten(out)) == Counter(range(60))
    assert all(len({keys[i] for i in b}) == len(b) for b in out)
    assert all(len(b) <= 8 for b in out)


def test_bad_batch_size():
    with pytest.raises(ValueError):
        shuffled_batches(3, 0)
