"""Budget presets: one knob (``quick | standard | thorough``) that sizes the whole adaptation.

A preset sets, coherently, how many passages get queries (every passage up to a cap, so a small
corpus is used whole), the queries per passage and their styles, how many pairs the judge sees
(a calibration sample first; the rest only if the judge passes it), the negatives and the
epochs (one, or more passes over a small training set until ``min_steps`` steps). Precedence,
per config field: the run config set explicitly > the dataset's ``overrides`` in
``datasets.yaml`` > the budget preset > the asset's own default.

The budget is the ``budget`` config field of each asset it sizes (``retriever-forge run --budget``
and ``bench/quality.py --budget`` set it on all of them, see :func:`with_budget`), else the
dataset's ``budget:`` in ``datasets.yaml`` (the demo uses ``quick``), else ``standard``.

Why these sizes: with the bundled SmolLM2-135M on the 2-core CPU here, one query per style
(question, keywords, claim) for every passage with an abstract was the only recipe that gained
on cacm (+0.045 nDCG@10); a 135M judge is at chance (ROC AUC ~0.5) and judging was most of the
time, so the judge is checked on a small calibration sample first and the time goes into
generation instead. ``standard`` caps generation at 2,000 passages x 3 queries (~12.5 minutes at
the ~8 queries/s of a 2-core CPU with native bfloat16), which keeps a 1,000-5,000 passage corpus
under 45 minutes cold there. An AVX2-only 2-core CPU computes in float32 at ~1.4 queries/s (measured:
1,200 generations in 14.4 minutes), so the same plan takes over an hour; the logged plan says so
once a run has measured the machine (:class:`ThroughputLog`).

Example:
    >>> preset_values("quick", "synthetic_queries")["documents_to_sample"]
    400
    >>> plan = estimate_plan(eligible_passages=3000, budget="standard")
    >>> plan["passages"], plan["generations"], plan["calibration_pairs"]
    (2000, 6000, 200)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

BUDGETS = ("quick", "standard", "thorough")
DEFAULT_BUDGET = "standard"

# Per asset, the config values each preset sets (fields of that asset's Dagster config).
PRESETS: dict[str, dict[str, dict]] = {
    "quick": {
        "synthetic_queries": {"documents_to_sample": 400, "min_passage_words": 20, "queries_per_document": 3},
        "relevance_judgments": {"candidates_per_query": 1, "candidate_rank_start": 10, "calibration_queries": 48},
        "fine_tuned_encoder": {"epochs": 1, "min_steps": 48, "negatives_per_example": 3, "max_seq_length": 128, "min_dev_gain_z": 2.0},
    },
    "standard": {
        "synthetic_queries": {"documents_to_sample": 2000, "min_passage_words": 20, "queries_per_document": 3},
        "relevance_judgments": {"candidates_per_query": 1, "candidate_rank_start": 10, "calibration_queries": 100},
        "fine_tuned_encoder": {"epochs": 1, "min_steps": 48, "negatives_per_example": 3, "max_seq_length": 128, "min_dev_gain_z": 2.0},
    },
    "thorough": {
        "synthetic_queries": {"documents_to_sample": 6000, "min_passage_words": 20, "queries_per_document": 3},
        "relevance_judgments": {"candidates_per_query": 2, "candidate_rank_start": 10, "calibration_queries": 200},
        "fine_tuned_encoder": {"epochs": 1, "min_steps": 48, "negatives_per_example": 3, "max_seq_length": 128, "min_dev_gain_z": 2.0},
    },
}

# Throughput assumed until this machine has measured its own (:class:`ThroughputLog`): measured on
# a 2-core EPYC with native bfloat16 (AMX), SmolLM2-135M and all-MiniLM-L6-v2. A CPU without it
# (AVX2 only: float32) is several times slower: about 1.5 generations/s and 1.5 examples/s.
ASSUMED_THROUGHPUT = {"generations_per_s": 8.0, "judgments_per_s": 8.0, "train_examples_per_s": 7.0, "passages_encoded_per_s": 30.0}
KEPT_SHARE = 0.6  # share of generated queries the filters kept on cacm and msmarco-5k
# Above this, the logged plan says what trades gain for time: the ``standard`` preset is sized to
# finish a 1,000-5,000 passage corpus within it on a 2-core CPU with native bfloat16, not on every CPU.
LONG_PLAN_MINUTES = 45.0


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
    rate = {**ASSUMED_THROUGHPUT, **(throughput or {})}
    passages = eligible_passages if n_docs is None else min(n_docs, eligible_passages)
    generations = passages * qpd
    kept = int(generations * KEPT_SHARE)
    calibration_pairs = 2 * min(cal, kept)
    full_judgments = kept * (1 + cands)
    # Examples trained on: the passes training will plan (more than one over a small set, min_steps).
    from retriever_forge.training import TrainingConfig, planned_epochs  # torch: only when a plan is made

    trained = kept * planned_epochs(kept, TrainingConfig(**preset_values(budget, "fine_tuned_encoder")))
    encode = (corpus_passages or eligible_passages) * 2  # the base encoder's (cached, reused by every stage) and the fine-tuned index
    seconds = (
        generations / rate["generations_per_s"]
        + calibration_pairs / rate["judgments_per_s"]
        + trained / rate["train_examples_per_s"]
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
        "throughput_measured_here": sorted(throughput or {}),
    }


def plan_message(plan: dict) -> str:
    """The plan in one log line; a plan over :data:`LONG_PLAN_MINUTES` also says how to shorten it.

    >>> slow = estimate_plan(eligible_passages=3000, throughput={"generations_per_s": 1.4})
    >>> plan_message(slow).split("; ")[-1]
    'over 45 min: fewer passages (synthetic_queries.documents_to_sample, or --budget quick: 400) finish sooner, but give the encoder less to learn from'
    """
    message = (
        f"plan ({plan['budget']} budget): {plan['passages']} passages -> {plan['generations']} generated queries "
        f"(~{plan['expected_kept_queries']} kept), judge calibration {plan['calibration_pairs']} pairs "
        f"(+{plan['judgments_if_judge_passes']} if the judge passes); about {plan['estimated_minutes']} min "
        f"({plan['estimated_minutes_if_judge_passes']} min if the judge is used) at "
        f"{plan['throughput_assumed']['generations_per_s']} generations/s and {plan['throughput_assumed']['train_examples_per_s']} "
        f"training examples/s ({_rate_source(plan.get('throughput_measured_here', []))})"
    )
    if plan["estimated_minutes"] > LONG_PLAN_MINUTES:
        quick = PRESETS["quick"]["synthetic_queries"]["documents_to_sample"]
        message += (
            f"; over {LONG_PLAN_MINUTES:g} min: fewer passages (synthetic_queries.documents_to_sample, or --budget quick: {quick}) "
            "finish sooner, but give the encoder less to learn from"
        )
    return message


def _rate_source(measured: list[str]) -> str:
    if not measured:
        return "assumed: not yet measured on this machine; a finished run records its own"
    rest = sorted(set(ASSUMED_THROUGHPUT) - set(measured))
    return f"measured on this machine by earlier runs: {', '.join(measured)}" + (f"; assumed: {', '.join(rest)}" if rest else "")


class ThroughputLog:
    """The rates earlier runs measured on this machine, so the next plan's minutes are this machine's.

    One small JSON file in the work folder (``work/throughput.json``; a work folder is local to a
    machine): per rate, the last measurement and the model it was measured with. A rate
    measured with another model is not used (a larger generator is slower).

    Example:
        >>> import tempfile, pathlib
        >>> log = ThroughputLog(pathlib.Path(tempfile.mkdtemp()) / "throughput.json")
        >>> log.record("generations_per_s", count=300, seconds=200.0, model="smollm2")
        >>> log.rates({"generations_per_s": "smollm2"}), log.rates({"generations_per_s": "gemma"})
        ({'generations_per_s': 1.5}, {})
    """

    MIN_COUNT = 32  # fewer items than one batch say little about a rate

    def __init__(self, path) -> None:
        self.path = Path(path)

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: the plan falls back to the assumed rates
        return data if isinstance(data, dict) else {}

    def rates(self, models: dict[str, str]) -> dict[str, float]:
        """The measured rates whose model matches ``models`` (rate name -> model id)."""
        data = self._read()
        return {
            name: float(entry["per_s"])
            for name, model in models.items()
            if isinstance(entry := data.get(name), dict) and entry.get("model") == model and entry.get("per_s", 0) > 0
        }

    def record(self, name: str, count: int, seconds: float, model: str) -> None:
        """Keep ``count / seconds`` as this machine's ``name`` rate (ignored for tiny or untimed work)."""
        if name not in ASSUMED_THROUGHPUT:
            raise ValueError(f"unknown rate {name!r}; one of {', '.join(ASSUMED_THROUGHPUT)}")
        if count < self.MIN_COUNT or seconds <= 0:
            return
        data = self._read()
        data[name] = {"per_s": round(count / seconds, 3), "count": int(count), "seconds": round(seconds, 1), "model": model,
                      "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)  # atomic: a concurrent reader sees the old file or the new one
