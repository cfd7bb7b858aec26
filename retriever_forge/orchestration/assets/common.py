"""What every asset does the same way: the decorator of a stage, its config derived from the
stage's domain dataclass and resolved per dataset, and the Output of an artifact with its manifest."""

import dataclasses
import functools
import inspect
import os
import re
import time
import typing
import warnings
from contextlib import contextmanager

import dagster as dg
import polars as pl
import pydantic

from retriever_forge.artifacts import ArtifactRef, ArtifactStore
from retriever_forge.datasets import DatasetError, DatasetSpec, datasets_file, load_registry
from retriever_forge.provenance import build_manifest, code_version, now, trace, trace_markdown

# One partition per named dataset in datasets.yaml. The partitions are dynamic (kept in the
# Dagster instance, not in the code), so a new dataset is materializable without reloading the
# code location: `retriever-forge datasets add` registers it at once, and the
# `dataset_registry` sensor registers datasets added to (or removed from) the file by hand.
DATASET_PARTITIONS = "datasets"
dataset_partitions = dg.DynamicPartitionsDefinition(name=DATASET_PARTITIONS)
CODE_VERSION = code_version()

# Shared hardware as Dagster concurrency pools: every step that drives the LLM runs in the `llm`
# pool and every step that runs the encoder on the accelerator in the `gpu` pool, so ten datasets
# queue for one vLLM server and one GPU instead of oversubscribing them. The limits are set in
# the instance (dagster.yaml `concurrency: pools: default_limit`, or `dagster instance
# concurrency set gpu 1`); without a limit a pool does not restrict anything.
LLM_POOL = "llm"
GPU_POOL = "gpu"
# LLM steps talk to a server that may be restarting or overloaded: retry them with backoff.
# Their generations are cached durably, so a retry resumes where the failed attempt stopped.
LLM_RETRY_POLICY = dg.RetryPolicy(max_retries=3, delay=20, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def changed_upstream_condition() -> dg.AutomationCondition:
    """Declarative automation for every asset: run a dataset's asset when an upstream asset's data
    version changed (for the `dataset_source`: its files' content hash) or its own code version
    changed, once every upstream is present and none is running.

    It is Dagster's ``eager()`` with code-version changes added. Like ``eager()`` it reacts only to
    changes seen between two evaluations (``since_last_handled``): partitions that were already
    stale or missing when the automation sensor is first switched on are not launched in one
    flood, and a sensor switched back on after a pause launches at most one run per changed
    dataset. An unchanged night (same files, code and datasets-file entry) launches nothing.
    """
    A = dg.AutomationCondition
    return (
        (A.newly_missing() | A.any_deps_updated() | A.code_version_changed()).since_last_handled()
        & ~A.any_deps_missing()
        & ~A.any_deps_in_progress()
        & ~A.in_progress()
    ).with_label("changed_upstream")


def registry_changes(instance: dg.DagsterInstance, registry: dict[str, DatasetSpec] | None = None) -> tuple[list[str], list[str]]:
    """(datasets in the file but not yet partitions, partitions no longer in the file)."""
    names = set(load_registry() if registry is None else registry)
    known = set(instance.get_dynamic_partitions(DATASET_PARTITIONS))
    return sorted(names - known), sorted(known - names)


def sync_dataset_partitions(
    instance: dg.DagsterInstance, registry: dict[str, DatasetSpec] | None = None, remove: bool = True
) -> tuple[list[str], list[str]]:
    """Make the instance's dataset partitions those of the datasets file; returns (added, removed).

    ``remove=False`` only adds (for one-off runs that may use another datasets file).
    """
    added, removed = registry_changes(instance, registry)
    removed = removed if remove else []
    if added:
        instance.add_dynamic_partitions(DATASET_PARTITIONS, added)
    for name in removed:
        instance.delete_dynamic_partition(DATASET_PARTITIONS, name)
    return added, removed


def asset_owners() -> list[str]:
    """Owners shown on every asset: ``RETRIEVER_FORGE_OWNERS`` (comma-separated emails or ``team:name``)."""
    return [o.strip() for o in os.environ.get("RETRIEVER_FORGE_OWNERS", "team:retrieval").split(",") if o.strip()]


def asset_tags(stage: str) -> dict[str, str]:
    """Tags on every asset (filterable in the UI's catalog); ``RETRIEVER_FORGE_TAGS`` adds ``k=v,k2=v2``."""
    extra = dict(kv.split("=", 1) for kv in os.environ.get("RETRIEVER_FORGE_TAGS", "").split(",") if "=" in kv)
    return {"pipeline": "adapt_retriever", "stage": stage, **extra}


def check_spec(name: str, asset: str, description: str, blocking: bool = False) -> dg.AssetCheckSpec:
    """An asset check whose results belong to the partition (dataset) it evaluated, not to every partition."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*")  # a preview API, used on purpose
        return dg.AssetCheckSpec(name, asset=asset, description=description, blocking=blocking, partitions_def=dataset_partitions)


class Check(typing.NamedTuple):
    """An asset check of a stage asset (see :func:`stage_asset`); ``blocking`` stops downstream steps when it fails."""

    name: str
    description: str
    blocking: bool = False


def stage_asset(stage: str, *, checks: tuple[Check, ...] = (), **asset_args):
    """``@dg.asset`` for one pipeline stage: partitioned by dataset, grouped and tagged by ``stage``,
    owned by :func:`asset_owners`, stored through the artifact IO manager, versioned by the code.
    The asset's ``config`` arrives resolved: the values in effect for its dataset (:func:`effective_config`).

    Args:
        stage: The group and ``stage`` tag (data, generation, training, evaluation).
        checks: The asset's checks; their results belong to the partition they evaluated.
        asset_args: Further ``dg.asset`` arguments (``pool``, ``retry_policy``, ``kinds``, ...).

    Example::

        @stage_asset("evaluation", pool=GPU_POOL, kinds={"faiss"})
        def corpus_index(context, config: CorpusIndexConfig, corpus: ArtifactRef, ...): ...
    """

    def decorate(fn):
        specs = [check_spec(c.name, fn.__name__, c.description, blocking=c.blocking) for c in checks]
        compute = fn
        if "config" in inspect.signature(fn).parameters:  # Dagster reads the wrapped signature (inputs, resources, config class)
            if inspect.isgeneratorfunction(fn):

                @functools.wraps(fn)
                def compute(context, config, **kwargs):
                    yield from fn(context, effective_config(context, config), **kwargs)
            else:

                @functools.wraps(fn)
                def compute(context, config, **kwargs):
                    return fn(context, effective_config(context, config), **kwargs)

        return dg.asset(partitions_def=dataset_partitions, group_name=stage, owners=asset_owners(), tags=asset_tags(stage),
                        io_manager_key="artifact_io", code_version=CODE_VERSION, check_specs=specs or None, **asset_args)(compute)  # fmt: skip

    return decorate


def dataset_spec(context: dg.AssetExecutionContext) -> DatasetSpec:
    name = context.partition_key
    registry = load_registry()  # re-read: the file may have changed since the code location loaded
    if name not in registry:
        raise dg.Failure(f"dataset {name!r} is not in the datasets file; known: {sorted(registry)}")
    return registry[name]


BUDGET_DESCRIPTION = "Budget preset quick | standard | thorough (null: the dataset's budget, else standard)."


def field_docs(cls: type) -> dict[str, str]:
    """Each field's text in the ``Args:`` section of ``cls``'s docstring (Google style, continuation lines joined).

    Example:
        >>> @dataclasses.dataclass
        ... class Probe:
        ...     \"\"\"A probe.
        ...
        ...     Args:
        ...         depth: How deep,
        ...             in ranks.
        ...     \"\"\"
        ...     depth: int = 1
        >>> field_docs(Probe)
        {'depth': 'How deep, in ranks.'}
    """
    docs, name, in_args = {}, None, False
    for line in (inspect.getdoc(cls) or "").splitlines():
        if line.strip() == "Args:":
            in_args = True
        elif in_args and line and not line.startswith(" "):
            break  # the next section
        elif in_args and (entry := re.match(r"^ {4}(\w+)(?: \([^)]*\))?:(.*)$", line)):
            name = entry[1]
            docs[name] = entry[2].strip()
        elif in_args and name and line.strip():
            docs[name] += " " + line.strip()
    return docs


class StageConfig(dg.Config):
    """Run config of a stage whose domain dataclass holds the fields' types, defaults and docs
    (built by :func:`stage_config`); :meth:`to_domain` turns the values in effect into that dataclass."""

    domain: typing.ClassVar[type]

    def to_domain(self, **derived):
        """The domain dataclass holding these values; ``derived`` sets fields the asset computes
        (from its inputs or from asset-only fields), which win over run config."""
        hints = typing.get_type_hints(self.domain)
        values = {}
        for f in dataclasses.fields(self.domain):
            if f.name in type(self).model_fields:
                value = getattr(self, f.name)
                values[f.name] = tuple(value) if typing.get_origin(hints[f.name]) is tuple and value is not None else value
        return self.domain(**{**values, **derived})


def stage_config(domain: type, fields: tuple[str, ...], *, budget: bool = False) -> type[StageConfig]:
    """A :class:`StageConfig` class with the named fields of the dataclass ``domain``: its types (a
    tuple becomes a list, as Dagster config has no tuples), defaults and the docs of its ``Args:``,
    so the dataclass is their one source. Subclass it to add asset-only fields.

    Args:
        domain: The stage's domain dataclass (e.g. ``querygen.QueryGenerationConfig``).
        fields: The fields a run may set, in the order the Launchpad shows them.
        budget: Add the ``budget`` field first (assets a budget preset sizes, see :mod:`retriever_forge.budget`).

    Example::

        class HardNegativesConfig(stage_config(MiningConfig, ("rank_start", "rank_end"))):
            guide_model: str | None = Field(default=None, description="GISTEmbed guide encoder (null: off).")
    """
    docs, hints = field_docs(domain), typing.get_type_hints(domain)
    by_name = {f.name: f for f in dataclasses.fields(domain)}
    unknown = sorted(set(fields) - set(by_name))
    if unknown:
        raise TypeError(f"stage_config: {domain.__name__} has no fields {unknown}")
    definitions = {"budget": (str | None, pydantic.Field(default=None, description=BUDGET_DESCRIPTION))} if budget else {}
    for name in fields:
        f, hint = by_name[name], hints[name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if typing.get_origin(hint) is tuple:
            hint, default = list[typing.get_args(hint)[0]], list(default)
        definitions[name] = (hint, pydantic.Field(default=default, description=docs.get(name)))
    config = pydantic.create_model(f"{domain.__name__}Fields", __base__=StageConfig, **definitions)
    config.domain = domain
    return config


def run_config_values(context: dg.AssetExecutionContext, asset: str | None = None) -> dict:
    """An asset's config (default: this one's) as the run config typed it, before Dagster fills in defaults.

    Read from the run itself: pydantic's ``model_fields_set`` leaves out an explicit value that
    equals the default, so it cannot tell "typed 200" from "left at 200".
    """
    ops = (context.run.run_config or {}).get("ops") or {}
    return dict((ops.get(asset or context.op_def.name) or {}).get("config") or {})


def dataset_overrides(spec: DatasetSpec, asset: str, config_cls: type[dg.Config]) -> dict:
    """The dataset's ``overrides.<asset>`` from the datasets file, validated by the asset's own config model.

    Raises:
        DatasetError: naming the datasets file, the dataset and the field (unknown, or of the wrong type).
    """
    where = f"{datasets_file()}: dataset {spec.name!r}: overrides.{asset}"
    overrides = ((spec.extra or {}).get("overrides") or {}).get(asset) or {}
    if not isinstance(overrides, dict):
        raise DatasetError(f"{where}: expected a mapping of config fields, got {overrides!r}")
    unknown = sorted(set(overrides) - set(config_cls.model_fields))
    if unknown:
        raise DatasetError(f"{where}.{unknown[0]}: not a config field of {asset} (fields: {', '.join(sorted(config_cls.model_fields))})")
    try:
        validated = config_cls(**overrides).model_dump()
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(x) for x in first["loc"])
        raise DatasetError(f"{where}.{field}: {first['msg']} (got {first.get('input')!r})") from None
    return {k: validated[k] for k in overrides}


def resolve_config(config: dg.Config, spec: DatasetSpec, asset: str, explicit: set[str] | dict | None = None) -> dg.Config:
    """The config in effect, of ``config``'s class: set explicitly > the dataset's overrides in
    the datasets file > the budget preset (:mod:`retriever_forge.budget`) > defaults.

    ``explicit`` names the fields the user set (an asset passes what its run config holds, see
    :func:`effective_config`); ``None`` means the fields given to ``config``'s constructor, for a
    config built in code. Assets a budget sizes have a ``budget`` config field; unset, it is the
    dataset's ``budget:`` in datasets.yaml, else ``standard``, and the result holds that name.

    Raises:
        dg.Failure: an override that is not a field of ``asset``'s config or has the wrong type,
            naming the datasets file, the dataset and the field.
    """
    try:
        overrides = dataset_overrides(spec, asset, type(config))
    except DatasetError as e:
        raise dg.Failure(str(e)) from None
    explicit = set(config.model_fields_set if explicit is None else explicit)
    values = config.model_dump()
    if "budget" in values:
        from retriever_forge.budget import DEFAULT_BUDGET, check_budget, preset_values

        values["budget"] = check_budget(values["budget"] or spec.budget or DEFAULT_BUDGET)
        for key, value in preset_values(values["budget"], asset).items():
            if key in values and key not in explicit:
                values[key] = value
    values.update({k: v for k, v in overrides.items() if k not in explicit})
    # The values as given (the overrides are validated above): validating again would turn a float
    # field's int default (0) into 0.0, which the model card prints, changing the model's hash.
    return config.model_copy(update=values)


def effective_config(context: dg.AssetExecutionContext, config: dg.Config) -> dg.Config:
    """The config this asset uses: :func:`resolve_config` with "explicit" read from the run config.

    The one path from run config to an asset's values (:func:`stage_asset` applies it to each
    stage's config; a :class:`StageConfig` then gives the domain object with
    :meth:`StageConfig.to_domain`). A value typed in the run config (or the Launchpad) wins even
    when it equals the code default.
    """
    return resolve_config(config, dataset_spec(context), context.op_def.name, run_config_values(context))


def other_asset_config(context: dg.AssetExecutionContext, asset: str, config_cls: type[dg.Config], **unset) -> dg.Config:
    """The config another asset of this run will use (``asset``, of class ``config_cls``), resolved
    from its run config as :func:`effective_config` resolves this asset's. ``unset`` fills fields its
    run config leaves out and counts as set there (e.g. this asset's ``budget``, which it then follows).
    """
    typed = {**unset, **run_config_values(context, asset)}
    return resolve_config(config_cls(**typed), dataset_spec(context), asset, explicit=set(typed))


def dataset_run_config(spec: DatasetSpec, config_classes: dict[str, type[dg.Config]]) -> dict:
    """Run config holding the values a run of this dataset will use beyond the code defaults, for the
    Launchpad: the budget preset's values (assets with a ``budget`` field) under the dataset's
    validated overrides.

    Overrides for an asset that is not in ``config_classes`` (a typo, or an asset without config)
    are an error naming the datasets file and the dataset.
    """
    from retriever_forge.budget import DEFAULT_BUDGET, check_budget, preset_values

    by_asset = (spec.extra or {}).get("overrides") or {}
    unknown = sorted(set(by_asset) - set(config_classes))
    if unknown:
        raise DatasetError(f"{datasets_file()}: dataset {spec.name!r}: overrides.{unknown[0]}: no such configurable asset "
                           f"(assets with config: {', '.join(sorted(config_classes))})")  # fmt: skip
    ops = {}
    for asset, cls in config_classes.items():
        values = {}
        if "budget" in cls.model_fields:
            budget = check_budget(getattr(spec, "budget", None) or DEFAULT_BUDGET)
            values = {"budget": budget, **{k: v for k, v in preset_values(budget, asset).items() if k in cls.model_fields}}
        values.update(dataset_overrides(spec, asset, cls))
        if values:
            ops[asset] = {"config": values}
    return {"ops": ops} if ops else {}


def markdown_table(df: pl.DataFrame, max_rows: int = 10, max_chars: int = 120) -> str:
    """A small Markdown preview of a table for the UI."""
    df = df.head(max_rows)
    cols = df.columns

    def cell(v) -> str:
        s = str(v).replace("|", "\\|").replace("\n", " ")
        return s if len(s) <= max_chars else s[: max_chars - 1] + "…"

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join(lines)


@contextmanager
def timed(context: dg.AssetExecutionContext | None = None):
    """Yields a dict that receives ``started_at`` now and ``seconds`` on exit.

    Given the asset's context (the timing of its whole work), it also emits the OpenLineage START
    of each asset the step materializes, when an OpenLineage transport is configured.
    """
    box = {"started_at": now(), "t0": time.perf_counter()}
    if context is not None:
        from retriever_forge.orchestration.assets.lineage_hooks import emit_start

        emit_start(context)
    try:
        yield box
    finally:
        box["seconds"] = round(time.perf_counter() - box["t0"], 2)


def artifact_output(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    ref: ArtifactRef,
    *,
    timing: dict,
    output_name: str = "result",
    metadata: dict | None = None,
    with_trace: bool = False,
    extra: dict | None = None,
    **provenance,
) -> dg.Output:
    """Write the manifest of the artifact this asset stored and wrap its ref in an Output whose
    data version is its hash; the manifest names the asset of ``output_name`` (from the context).

    Args:
        timing: The :func:`timed` record of the asset's work.
        output_name: The output (a multi-asset's asset name; ``result`` for a single asset).
        metadata: The asset's own entries for the UI, shown first.
        with_trace: Add the artifact's lineage down to its sources.
        extra: Lands in the manifest's ``extra`` record beside the asset's seconds.
        provenance: The manifest's ``upstream``, ``rows``, ``config``, ``models``, ``prompts``,
            ``sampling`` and ``seeds`` (see :func:`retriever_forge.provenance.build_manifest`).
    """
    manifest = build_manifest(
        ref, asset=context.asset_key_for_output(output_name).to_user_string(),
        partition=context.partition_key if context.has_partition_key else None, run_id=context.run.run_id,
        started_at=timing.get("started_at"), extra={"seconds": timing.get("seconds"), **(extra or {})}, **provenance,
    )  # fmt: skip
    store.write_manifest(ref, manifest)
    # What a person reads comes first (the asset's own entries, in the order it gave them); then
    # one provenance block with short hashes, and the full manifest behind a single entry.
    md = dict(metadata or {})
    if manifest["rows"] is not None:
        md["dagster/row_count"] = manifest["rows"]
    md["provenance"] = dg.MetadataValue.md(provenance_markdown(ref, manifest, timing.get("seconds")))
    if manifest["prompts"]:
        md["prompts"] = dg.MetadataValue.json(manifest["prompts"])
    if manifest["config"]:
        md["config"] = dg.MetadataValue.json(manifest["config"])
    if with_trace:
        md["lineage"] = dg.MetadataValue.md(trace_markdown(trace(store, ref.hash)))
    md["artifact_path"] = dg.MetadataValue.path(ref.payload_uri)
    md["manifest"] = dg.MetadataValue.json(manifest)
    with warnings.catch_warnings():  # data_version is a beta parameter, used on purpose: the artifact hash is the version
        warnings.filterwarnings("ignore", message=".*data_version.*")
        return dg.Output(ref, output_name=output_name, metadata=md, data_version=dg.DataVersion(ref.hash))


def artifact_model(asset: str, ref: ArtifactRef, **facts) -> dict:
    """The provenance record of a model that is an artifact of this graph (the fine-tuned encoder):
    its asset name and artifact hash, plus ``facts``."""
    return {"id": asset, "weights_hash": ref.hash, **facts}


SHORT_HASH = 12


def provenance_markdown(ref: ArtifactRef, manifest: dict, seconds: float | None) -> str:
    """Hashes once, short: this artifact, the code, each upstream artifact and model (full ones: the manifest)."""
    upstream = manifest.get("upstream") or {}
    ups = ", ".join(f"{name} `{u['hash'][:SHORT_HASH]}`" for name, u in sorted(upstream.items()))
    models = ", ".join(
        f"{role} {m.get('id', '')} `{str(m.get('weights_hash', ''))[:SHORT_HASH]}`" for role, m in (manifest.get("models") or {}).items()
    )
    lines = [f"artifact `{ref.hash[:SHORT_HASH]}` · code `{str(manifest.get('code_version', ''))[:SHORT_HASH]}`"
             + (f" · {seconds} s" if seconds is not None else ""),
             f"upstream: {ups}" if ups else "upstream: none (a source)", *([f"models: {models}"] if models else [])]  # fmt: skip
    return "  \n".join(lines)


def log_progress(context: dg.AssetExecutionContext):
    """A domain ``progress`` callback: messages go to the run log; training's step events also move a bar."""
    from retriever_forge.progress import progress_bar

    bars = {}

    def report(message) -> None:
        if isinstance(message, dict) and "step" in message and "total_steps" in message:
            bar = bars.get("train") or bars.setdefault(
                "train", progress_bar(int(message["total_steps"]), "train", unit="step", min_items=2)
            )
            bar.update(1)
            if message["step"] >= message["total_steps"]:
                bar.close()
        context.log.info(message)

    return report
