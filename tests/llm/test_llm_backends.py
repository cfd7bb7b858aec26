"""One behavioural suite, run against every backend (transformers, OpenAI-compatible HTTP, vLLM).

All three serve the same SmolLM2-135M weights. A 135M model's answers are not asserted for
meaning; what is asserted is what the pipeline relies on: order, determinism, reproducible
sampling, stop strings, and normalised choice distributions.
"""

from __future__ import annotations

import math

import pytest

from retriever_forge.llm import LLMBackend, SamplingParams
from retriever_forge.llm.decoding import logsumexp

PROMPTS = [
    "What is the capital of France?",
    "Write a short search query for this passage: Quicksort partitions an array around a pivot.",
    "Name a colour.",
    "List three fruits, one per line.",
]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8)
JUDGE_PROMPTS = [
    "Answer with 1 or 2. Which is larger, 1 or 2?",
    "Is Paris in France? Answer 1 for yes or 2 for no.",
    "Pick a number: 1 or 2.",
]


def test_backend_implements_protocol(backend):
    assert isinstance(backend, LLMBackend)
    assert backend.model_id
    digest = backend.weights_hash
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert backend.weights_hash == digest
    # Local backends name the dtype they compute in (it joins the cache key); here both are
    # float32 (the fixture's choice for transformers, vLLM's CPU default). Remote ones cannot know.
    assert getattr(backend, "numerics", "float32") == "float32"


def test_output_order_matches_input_and_greedy_is_deterministic(backend):
    forward = backend.generate(PROMPTS, GREEDY)
    backward = backend.generate(PROMPTS[::-1], GREEDY)
    assert len(forward) == len(PROMPTS)
    # Same texts in reversed order: outputs follow inputs, and greedy decoding repeats itself.
    assert [g.text for g in forward] == [g.text for g in backward[::-1]]
    assert len({g.text for g in forward}) > 1, "different prompts should not all give one answer"
    for g in forward:
        assert g.prompt_tokens > 0
        assert 1 <= g.completion_tokens <= GREEDY.max_new_tokens
        assert not g.cached
    assert backend.generate([], GREEDY) == []


def test_seeded_sampling_is_reproducible_and_seed_matters(backend):
    hot = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=8, seed=7)
    a = [g.text for g in backend.generate(PROMPTS[:3], hot)]
    b = [g.text for g in backend.generate(PROMPTS[:3], hot)]
    assert a == b
    other = [g.text for g in backend.generate(PROMPTS[:3], SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=8, seed=8))]
    assert other != a


def test_sample_does_not_depend_on_batch_neighbours(backend):
    hot = SamplingParams(temperature=1.0, max_new_tokens=8, seed=3)
    together = backend.generate(PROMPTS[:3], hot)
    alone = backend.generate([PROMPTS[1]], hot)
    assert together[1].text == alone[0].text


def test_stop_strings_truncate(backend):
    prompt = PROMPTS[1]
    free = backend.generate([prompt], SamplingParams(max_new_tokens=16))[0].text
    words = free.split()
    assert len(words) >= 3, f"need a longer greedy answer to pick a stop string from: {free!r}"
    stop = words[2]  # a string the unconstrained answer contains
    stopped = backend.generate([prompt], SamplingParams(max_new_tokens=16, stop=("never-in-output", stop)))[0].text
    assert stopped == free[: free.find(stop)]
    assert stop not in stopped


def test_choice_logprobs_are_normalised_and_deterministic(backend):
    choices = ["1", "2"]
    rows = backend.choice_logprobs(JUDGE_PROMPTS, choices)
    assert len(rows) == len(JUDGE_PROMPTS)
    for row in rows:
        assert len(row) == len(choices)
        assert all(math.isfinite(x) and x <= 1e-6 for x in row)
        assert abs(logsumexp(row)) < 1e-4
    again = backend.choice_logprobs(JUDGE_PROMPTS, choices)
    for row, row2 in zip(rows, again, strict=True):
        assert row == pytest.approx(row2, abs=1e-4)
    assert backend.choice_logprobs([], choices) == []


def test_choice_logprobs_four_labels_match_grades_shape(backend):
    prompt = "Rate how relevant 'sorting algorithms' is to 'Quicksort partitions an array'. Answer 0, 1, 2 or 3."
    (row,) = backend.choice_logprobs([prompt], ["0", "1", "2", "3"])
    assert len(row) == 4
    assert abs(logsumexp(row)) < 1e-4
    # Not a uniform distribution: the model's preference is visible through the restriction.
    assert max(row) - min(row) > 1e-3


def test_vllm_scores_like_transformers(vllm_llm, smollm):
    """Same weights, same tokens in: the two in-process engines agree on the judge's distribution."""
    via_vllm = vllm_llm.choice_logprobs(JUDGE_PROMPTS, ["1", "2"])
    via_transformers = smollm.choice_logprobs(JUDGE_PROMPTS, ["1", "2"])
    for v, t in zip(via_vllm, via_transformers, strict=True):
        assert v == pytest.approx(t, abs=1e-3)


def test_vllm_seeded_batch_larger_than_one_scheduler_step(vllm_llm):
    """More prompt tokens than one step's budget (1024 here), sampled with seeds: must not crash."""
    passage = " ".join(["Quicksort partitions an array around a pivot and sorts both parts."] * 12)
    prompts = [f"Passage {i}: {passage}\nWrite a search query for passage {i}." for i in range(8)]
    hot = SamplingParams(temperature=1.0, max_new_tokens=4, seed=5)
    out = vllm_llm.generate(prompts, hot)
    assert sum(g.prompt_tokens for g in out) > 1024
    assert [g.text for g in out] == [g.text for g in vllm_llm.generate(prompts, hot)]
