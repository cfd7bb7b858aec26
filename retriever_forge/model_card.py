"""The model card (``README.md``) written into every fine-tuned model folder.

It follows the Hugging Face / sentence-transformers model-card format: YAML front matter
(``base_model``, ``library_name: sentence-transformers``, ``pipeline_tag``, ``tags``,
``datasets``) and a Markdown body with the training data summary, the loss, hyper-parameters,
precision, hardware, steps and the kept step, the dev evaluation, the scoreboard when one is
known (with its significance fields when the scoreboard has them) and the lineage hashes with the
``retriever-forge trace`` commands that reproduce them. The card is a file of the model folder,
so its hash is part of the artifact's content hash; it holds no timestamps or run ids, so an
unchanged re-run publishes the same bytes.

Example:
    >>> card = render_model_card({"base_model": "all-MiniLM-L6-v2", "dataset": "demo", "training": {"steps": 3, "best_step": 3}})
    >>> card.splitlines()[0], "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    ('---', True)
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from retriever_forge.artifacts import ArtifactRef, ArtifactStore

CARD_FILE = "README.md"
_MEASURE_NAMES = {"ndcg_cut_10": "nDCG@10", "recall_100": "Recall@100", "map": "MAP", "recip_rank": "MRR"}
_LINEAGE_ASSETS = ("corpus", "synthetic_queries", "relevance_judgments", "hard_negatives", "training_examples")


def hub_model_id(name: str | None) -> str | None:
    """The Hub id to name as ``base_model``: bare sentence-transformers names get their
    organisation, local folders none (the card names them in its text instead).

    >>> hub_model_id("all-MiniLM-L6-v2"), hub_model_id("BAAI/bge-small-en-v1.5"), hub_model_id("/models/enc")
    ('sentence-transformers/all-MiniLM-L6-v2', 'BAAI/bge-small-en-v1.5', None)
    """
    if not name or name.startswith(("/", ".", "~")) or Path(name).exists():
        return None
    return name if "/" in name else f"sentence-transformers/{name}"


def card_lineage(store: ArtifactStore, training_examples: ArtifactRef) -> dict:
    """The hashes, models and prompts upstream of a training table, from the stored manifests."""
    from retriever_forge.audit import lineage_graph

    graph = lineage_graph(store, training_examples.hash)
    artifacts, models, prompts = {}, {}, {}
    for h, node in sorted(graph.items(), key=lambda kv: kv[1]["layer"]):
        m = node["manifest"]
        asset = m.get("asset")
        if asset in _LINEAGE_ASSETS:
            artifacts[asset] = {"hash": h, "rows": m.get("rows")}
        for role, model in (m.get("models") or {}).items():
            models[f"{asset}.{role}"] = {"id": model.get("id"), "weights_hash": model.get("weights_hash")}
        for role, p in (m.get("prompts") or {}).items():
            prompts[f"{asset}.{role}"] = {"id": p.get("id"), "hash": p.get("hash")}
    return {"artifacts": artifacts, "models": models, "prompts": prompts}


def published_weights(store: ArtifactStore, fine_tuned_encoder: ArtifactRef) -> str:
    """``base`` when no training step beat the base model on dev (its weights were published),
    else ``fine-tuned (step N of M)``."""
    training = ((store.read_manifest(fine_tuned_encoder) or {}).get("extra") or {}).get("training") or {}
    # kept_base_weights: step 0 won a dev evaluation (without dev queries the last step's weights are published)
    if training.get("kept_base_weights", training.get("best_step") == 0):
        return "base"
    if not training.get("best_step"):  # no dev evaluation picked a step: the last one's weights
        return f"fine-tuned (last step, {training.get('steps')}; no dev evaluation)"
    return f"fine-tuned (step {training.get('best_step')} of {training.get('steps')})"


def _fmt(v) -> str:
    from retriever_forge.audit import comparison_text

    if comparison_text(v) is not None:
        return comparison_text(v)
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}".rstrip("0").rstrip(".") if v != int(v) else str(v)
    if isinstance(v, dict | list):
        return "`" + json.dumps(v, default=str) + "`"
    return "" if v is None else str(v).replace("|", "\\|")


def _table(rows: list[dict]) -> list[str]:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + [
        "| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows
    ]


def render_model_card(facts: dict) -> str:
    """The card's text from plain facts (every key optional but ``base_model`` and ``dataset``).

    Keys: ``base_model``, ``base_weights_hash``, ``dataset``, ``examples`` (rows, splits, mean
    negatives), ``loss``, ``hyperparameters``, ``training`` (steps, best_step, stop_reason, device,
    precision), ``hardware``, ``dev_metrics``, ``scoreboard`` (rows per system, any extra fields
    such as significance kept), ``scoreboard_judgments``, ``lineage`` (:func:`card_lineage`),
    ``code_version``, ``git_commit`` (the training card leaves these two out: the same training on
    other code keeps the same bytes; the manifest records them).
    """
    base = facts.get("base_model")
    dataset = facts.get("dataset") or "unknown"
    training = facts.get("training") or {}
    front = {
        **({"base_model": hub_model_id(base)} if hub_model_id(base) else {}),
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "tags": [
            "sentence-transformers",
            "sentence-similarity",
            "feature-extraction",
            "dense-retrieval",
            "retriever-forge",
            "synthetic-queries",
            "llm-judged",
            f"loss:{facts.get('loss') or 'infonce'}",
        ],  # fmt: skip
        "datasets": [dataset],
    }
    out = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
           f"# {base or 'encoder'} adapted to `{dataset}` with retriever-forge", "",
           f"A dense retriever fine-tuned from **{base}** on synthetic queries an LLM wrote for the passages of the "
           f"`{dataset}` corpus, with LLM-judged relevance grades and mined hard negatives. Built by "
           "[retriever-forge](https://pypi.org/project/retriever-forge/); every number below comes from the "
           "artifacts' provenance manifests.", "",
           "## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", "",
           'model = SentenceTransformer("path/to/this/folder")',
           'embeddings = model.encode(["a query", "a passage"], normalize_embeddings=True)', "```", ""]  # fmt: skip
    ex = facts.get("examples") or {}
    lineage = facts.get("lineage") or {}
    out += ["## Training data", ""]
    if ex:
        out.append(f"- {ex.get('rows')} training examples (query, positive passage, hard negatives); splits: {_fmt(ex.get('splits'))}")
        if ex.get("mean_negatives") is not None:
            out.append(f"- {ex['mean_negatives']} hard negatives per example on average")
    for asset in ("corpus", "synthetic_queries", "relevance_judgments", "hard_negatives"):
        a = (lineage.get("artifacts") or {}).get(asset)
        if a:
            out.append(f"- `{asset}`: {a.get('rows')} rows")
    for role, m in (lineage.get("models") or {}).items():
        out.append(f"- model `{role}`: {m.get('id')} (weights `{str(m.get('weights_hash'))[:16]}`)")
    for role, p in (lineage.get("prompts") or {}).items():
        out.append(f"- prompt `{role}`: {p.get('id')} (`{str(p.get('hash'))[:16]}`)")
    out += ["", "## Training procedure", "", f"- Loss: **{facts.get('loss') or 'infonce'}**",
            f"- Precision: {training.get('precision', 'unknown')} on {training.get('device', 'unknown')}",
            f"- Steps: {training.get('steps')}; kept step: **{training.get('best_step')}** "
            f"({'the base weights: no step beat the base model on the dev queries' if training.get('best_step') == 0 else 'the best on the dev queries'}); "
            f"stop reason: {training.get('stop_reason', 'unknown')}"]  # fmt: skip
    hw = facts.get("hardware") or {}
    if hw:
        out.append("- Hardware: " + ", ".join(f"{k} {_fmt(v)}" for k, v in hw.items()))
    if facts.get("base_weights_hash"):
        out.append(f"- Base weights: `{facts['base_weights_hash']}`")
    hp = facts.get("hyperparameters") or {}
    if hp:
        out += ["", "### Hyper-parameters", "", "| parameter | value |", "|---|---|"]
        out += [f"| `{k}` | {_fmt(v)} |" for k, v in hp.items()]
    dev = facts.get("dev_metrics") or []
    if dev:
        out += ["", "### Dev evaluation (held-out synthetic dev queries, during training)", "", *_table(dev)]
    out += ["", "## Scoreboard", ""]
    board = facts.get("scoreboard")
    if board:
        rows = [{("system" if k == "system" else _MEASURE_NAMES.get(k, k)): v for k, v in r.items()} for r in board]
        out += _table(rows)
        if facts.get("scoreboard_judgments"):
            out += ["", f"Judgments: {facts['scoreboard_judgments']}."]
    else:
        out.append("The benchmark runs after the model is published (it scores this very folder); its scoreboard is in "
                   f"`scoreboards/{dataset}.md` of the store, and `retriever-forge model-card benchmark_scores {dataset} --out DIR` "
                   "writes a copy of this folder whose card includes it.")  # fmt: skip
    arts = lineage.get("artifacts") or {}
    out += ["", "## Lineage", "", "Content hashes of the artifacts this model was trained from (sha256 of their bytes):", "",
            "| artifact | hash |", "|---|---|"]  # fmt: skip
    out += [f"| `{a}` | `{v['hash']}` |" for a, v in arts.items()]
    if facts.get("code_version") or facts.get("git_commit"):
        out += ["", f"Code version `{facts.get('code_version')}`, git commit `{facts.get('git_commit')}`."]
    out += ["",
            "Reproduce the lineage (in the store that holds these artifacts):", "", "```bash",
            f"retriever-forge trace fine_tuned_encoder {dataset}"]  # fmt: skip
    if "training_examples" in arts:
        out.append(f"retriever-forge trace {arts['training_examples']['hash'][:16]}")
    out += [f"retriever-forge audit fine_tuned_encoder {dataset} --out audit.html", "```", ""]
    return "\n".join(out)


def training_card_facts(
    store: ArtifactStore, training_examples: ArtifactRef, examples, *, base_model: str, base_weights_hash: str, dataset: str, config, result
) -> dict:
    """The card's facts for a just-trained model (``config``: a TrainingConfig, ``result``: its
    TrainingResult, ``examples``: the training table). Deterministic for identical training."""
    from dataclasses import asdict

    from retriever_forge.provenance import hardware

    splits = {r[0]: r[1] for r in examples.group_by("split").len().sort("split").iter_rows()} if examples.height else {}
    hp = {k: v for k, v in asdict(config).items() if k not in ("device",)}
    dev = [{"step": d.get("step"), **{k: round(v, 4) for k, v in d.items() if k != "step" and isinstance(v, float)}}
           for d in result.dev_metrics if d.get("step") in (0, result.best_step, result.dev_metrics[-1].get("step"))]  # fmt: skip
    return {
        "base_model": base_model, "base_weights_hash": base_weights_hash, "dataset": dataset, "loss": config.loss,
        "examples": {"rows": examples.height, "splits": splits,
                     "mean_negatives": round(float(examples["negative_ids"].list.len().mean() or 0), 2) if examples.height else 0},
        "hyperparameters": hp,
        "training": {"steps": len(result.history), "best_step": result.best_step, "stop_reason": result.stop_reason,
                     "device": result.device, "precision": result.precision},
        "hardware": hardware(), "dev_metrics": dev, "lineage": card_lineage(store, training_examples),
    }  # fmt: skip


def write_model_card(folder: str | Path, facts: dict) -> Path:
    """Write ``README.md`` (replacing the generic card sentence-transformers saved)."""
    path = Path(folder) / CARD_FILE
    path.write_text(render_model_card(facts), encoding="utf-8")
    return path
