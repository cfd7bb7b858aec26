"""The transformers backend's batching shortcuts change speed, never outputs.

Two shortcuts: a batch's shared prompt prefix (the few-shot template) is run once and its
key/value cache repeated, and rows that finished (newline stop or EOS) leave the batch. Both
must give exactly what running each prompt alone gives.
"""

from __future__ import annotations

from retriever_forge.llm import SamplingParams
from retriever_forge.querygen import QueryGenerationConfig, style_templates

PASSAGES = [
    "Quicksort partitions an array around a pivot and sorts both sides recursively.",
    "The mitochondrion is the organelle where cellular respiration produces most of the ATP.",
    "Compilers translate source code into machine code through lexing, parsing and code generation.",
    "A hash table maps keys to buckets with a hash function; collisions are chained or probed.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
]


def test_shared_prefix_and_finished_rows_leave_outputs_unchanged(smollm):
    template = style_templates(QueryGenerationConfig())["question"]
    prompts = [template.render(passage=p, instruction="") for p in PASSAGES]
    llm = smollm.variant(chat_template=False, batch_size=len(prompts))
    ids = llm._encode(prompts)
    shared = next(i for i in range(min(map(len, ids))) if len({tuple(r[: i + 1]) for r in ids}) > 1)
    assert shared >= 16, "the few-shot template should give a shared prefix long enough to reuse"

    for params in (
        SamplingParams(temperature=0.0, max_new_tokens=24, stop=("\n",)),
        SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=24, seed=5, stop=("\n",)),
    ):
        together = llm.generate(prompts, params)
        alone = [llm.generate([p], params)[0] for p in prompts]
        assert [g.text for g in together] == [g.text for g in alone]
        assert [g.completion_tokens for g in together] == [g.completion_tokens for g in alone]
        # Rows stopped at different steps, so some rows left the batch while others decoded on.
        assert len({g.completion_tokens for g in together}) > 1


def test_batches_bound_padding_and_size():
    from retriever_forge.llm import TransformersLLM

    lengths = [129, 130, 133, 140, 150, 159, 166, 184, 233, 248, 333, 12]
    llm = TransformersLLM("unused", batch_size=4)  # no weights are loaded to plan batches
    batches = llm._batches([[0] * n for n in lengths], max_padding=0.25)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 4
        real = sum(lengths[i] for i in batch)
        assert max(lengths[i] for i in batch) * len(batch) <= 1.25 * real
    # The 12-token outlier is not padded to 129 tokens; the longest prompts batch together.
    assert [11] in batches and [8, 9, 10] in batches


def test_padding_is_counted_after_the_shared_prefix():
    from retriever_forge.llm import TransformersLLM

    prefix = list(range(100, 200))  # a 100-token few-shot template, run once per batch
    rows = [prefix + [r] * n for r, n in enumerate((10, 11, 40, 42))]
    llm = TransformersLLM("unused", batch_size=4)
    # Whole prompts (110..142 tokens) would pad by under 25%; their suffixes (10..42) would not.
    assert sorted(map(sorted, llm._batches(rows, max_padding=0.25))) == [[0, 1], [2, 3]]


def test_batches_prefilled_apart_decode_together_with_unchanged_outputs(smollm):
    template = style_templates(QueryGenerationConfig())["question"]
    passages = [*PASSAGES[:3], " ".join(PASSAGES * 3), " ".join(PASSAGES[1:] * 2)]  # three short, two long
    prompts = [template.render(passage=p, instruction="") for p in passages]
    llm = smollm.variant(chat_template=False, batch_size=len(prompts))
    waves = llm._waves(llm._batches(llm._encode(prompts)))
    assert len(waves) == 1 and len(waves[0]) >= 2, "prefill batches of unlike lengths, one decode wave"
    params = SamplingParams(temperature=0.0, max_new_tokens=16, stop=("\n",))
    together = llm.generate(prompts, params)
    alone = [llm.generate([p], params)[0] for p in prompts]
    assert [g.text for g in together] == [g.text for g in alone]
    assert [g.completion_tokens for g in together] == [g.completion_tokens for g in alone]
