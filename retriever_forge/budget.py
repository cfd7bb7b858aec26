"""Budget presets: one knob (``quick | standard | thorough``) that sizes the whole adaptation.

A preset sets, coherently, how many passages get queries (every passage up to a cap, so a small
corpus is used whole), the queries per passage and their styles, how many pairs the judge sees
(a calibration sample first; the rest only if the judge passes it), the negatives and the
epochs. Precedence, per config field: the run config set explicitly > the dataset's
``overrides`` in ``datasets.yaml`` > the budget preset > the asset's own default.

The budget is the ``budget`` config field of each asset it sizes (``retriever-forge run --budget``
and ``bench/quality.py --budget`` set it on all of them, see :func:`with_budget`), else the
dataset's ``budget:`` in ``datasets.yaml`` (the demo uses ``quick``), else ``standard``.

Why these sizes: with the bundled SmolLM2-135M on the 2-core CPU here, one query per style
(question, keywords, claim) for every passage with an abstract was the only recipe that gained
on cacm (+0.045 nDCG@10); a 135M judge is at chance (ROC AUC ~0.5) and judging was most of the
time, so the judge is checked on a small calibration sample first and the time goes into
generation instead. ``standard`` caps generation at 2,000 passages x 3 queries (~12.5 minutes at
the ~8 queries/s measured here), which keeps a 1,000-5,000 passage corpus under 45 minutes cold.

Example:
    >>> preset_values("quick", "synthetic_queries")["documents_to_sample"]
    400
    >>> plan = estimate_plan(eligible_passages=3000, budget="standard")
    >>> plan["passages"], plan["generations"], plan["calibration_pairs"]
    (2000, 6000, 200)
"""

from __future__ import annotations

BUDGETS = ("quick", "standard", "thorough")
DEFAULT_BUDGET = "standard"

# Per asset, the config values each preset sets (fields of that asset's Dagster config).
PRESETS: dict[str, dict[str, dict]] = {
    "quick": {
        "synthetic_queries": {"documents_to_sample": 400, "min_passage_words": 20, "queries_per_document": 3},
        "relevance_judgments": {"candidates_per_query": 1, "candidate_rank_start": 10, "calibration_queries": 48},
        "fine_tuned_encoder": {"epochs": 1, "negatives_per_example": 3, "max_seq_length": 128, "min_dev_gain_z": 2.0},
    },
    "standard": {
        "synthetic_queries": {"documents_to_sample": 2000, "min_passage_words": 20, "queries_per_document": 3},
        "relevance_judgments": {"candidates_per_query": 1, "candidate_rank_start": 10, "calibration_queries": 100},
        "fine_tuned_encoder": {"epochs": 1, "negatives_per_example": 3, "max_seq_length": 128, "min_dev_gain_z": 2.0},
    },
    "thorough": {
        "synthetic_queries": {"documents_to_sample": 6000, "min_passage_words": 20, "queries_per_document": 3},
        "relevance_judgments": {"candidates_per_query": 2, "candidate_rank_start": 10, "calibration_queries": 200},
        "fine_tuned_encoder": {"epochs": 1, "negatives_per_example": 3, "max_seq_length": 128, "min_dev_gain_z": 2.0},
    },
}

# Throughput measured on the development machine (2-core EPYC, bfloat16, SmolLM2-135M,
# all-MiniLM-L6-v2): the plan's time estimate. A faster backend only makes the run shorter.
MEASURED_THROUGHPUT = {"generations_per_s": 8.0, "judgments_per_s": 8.0, "train_examples_per_s": 7.0, "passages_encoded_per_s": 30.0}
KEPT_SHARE = 0.6  # share of generated queries the filters kept on cacm and msmarco-5k


def with_budget(run_config: dict, budget: str) -> dict:
    """``run_config`` with ``budget`` set on every asset a preset sizes (run config wins per asset).

    >>> with_budget({}, "quick")["ops"]["fine_tuned_encoder"]
    {'config': {'budget': 'quick'}}
    """
    check_budget(budget)
    ops = run_config.setdefault("ops", {})
    for asset in PRESETS[budget]:
        ops.setdefault(asset, {}).setdefault("config", {}).setdefault("budget", budget)
    return run_config


def check_budget(budget: str) -> str:
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    return budget


def preset_values(budget: str, asset: str) -> dict:
    """The config values ``budget`` sets for ``asset`` (empty for assets it does not size)."""
    return dict(PRESETS[check_budget(budget)].get(asset, {}))


def estimate_plan(
    eligible_passages: int,
    budget: str = DEFAULT_BUDGET,
    corpus_passages: int | None = None,
    documents_to_sample: int | None = None,
    queries_per_document: int | None = None,
    calibration_queries: int | None = None,
    candidates_per_query: int | None = None,
    throughput: dict | None = None,
) -> dict:
    """What a run will do, before the LLM stage: passages, generations, judgments and minutes.

    Judgments: the calibration pairs always (each query against its own source and a random
    passage); the full judging (source + candidates per kept query) only if the judge passes.
    """
    gen = preset_values(budget, "synthetic_queries")
    jud = preset_values(budget, "relevance_judgments")
    n_docs = documents_to_sample if documents_to_sample is not None else gen.get("documents_to_sample")
    qpd = queries_per_document or gen.get("queries_per_document", 1)
    cal = calibration_queries if calibration_queries is not None else jud.get("calibration_queries", 0)
    cands = candidates_per_query if candidates_per_query is not None else jud.get("candidates_per_query", 1)
    rate = {**MEASURED_THROUGHPUT, **(throughput or {})}
    passages = eligible_passages if n_docs is None else min(n_docs, eligible_passages)
    generations = passages * qpd
    kept = int(generations * KEPT_SHARE)
    calibration_pairs = 2 * min(cal, kept)
    full_judgments = kept * (1 + cands)
    encode = (corpus_passages or eligible_passages) * 2  # the base encoder's (cached, reused by every stage) and the fine-tuned index
    seconds = (
        generations / rate["generations_per_s"]
        + calibration_pairs / rate["judgments_per_s"]
        + kept / rate["train_examples_per_s"]
        + encode / rate["passages_encoded_per_s"]
    )
    return {
        "budget": budget,
        "passages": passages,
        "generations": generations,
        "expected_kept_queries": kept,
        "calibration_pairs": calibration_pairs,
        "judgments_if_judge_passes": full_judgments,
        "estimated_minutes": round(seconds / 60, 1),
        "estimated_minutes_if_judge_passes": round((seconds + full_judgments / rate["judgments_per_s"]) / 60, 1),
        "throughput_assumed": rate,
    }


def plan_message(plan: dict) -> str:
    return (
        f"plan ({plan['budget']} budget): {plan['passages']} passages -> {plan['generations']} generated queries "
        f"(~{plan['expected_kept_queries']} kept), judge calibration {plan['calibration_pairs']} pairs "
        f"(+{plan['judgments_if_judge_passes']} if the judge passes); about {plan['estimated_minutes']} min "
        f"({plan['estimated_minutes_if_judge_passes']} min if the judge is used) at the throughput measured on a 2-core CPU "
        f"({plan['throughput_assumed']['generations_per_s']} generations/s)"
    )
