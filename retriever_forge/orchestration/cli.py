"""``retriever-forge``: run the graph, trace an artifact's lineage, verify the store.

Examples::

    retriever-forge run                         # the offline demo, end to end
    retriever-forge run --dataset cacm -c configs/cacm.yaml
    retriever-forge run --dataset mycorpus --budget thorough
    retriever-forge trace benchmark_scores cacm
    retriever-forge trace 3f9a1c --json
    retriever-forge verify
    retriever-forge audit benchmark_scores demo --out audit.html
    retriever-forge diff 3f9a1c 77b2e0          # why two artifacts of one asset differ
    retriever-forge lineage export benchmark_scores demo --format openlineage --out events.jsonl
    retriever-forge model-card benchmark_scores demo --out model/   # the model, its card with the scoreboard
    retriever-forge datasets add notes --files data/notes.jsonl --text-field body
    retriever-forge datasets list
    retriever-forge search --dataset cacm "parallel sorting algorithms"
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from retriever_forge.datasets import PROJECT_ROOT


def _dagster_home() -> Path:
    """A durable local instance (SQLite run/event storage) unless DAGSTER_HOME says otherwise."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text("telemetry:\n  enabled: false\n")
    return home


def _home(args) -> str:
    from retriever_forge.orchestration.resources import DEFAULT_HOME

    return getattr(args, "home", None) or DEFAULT_HOME


def _store(args=None):
    """The artifact store: ``--home`` or ``$RETRIEVER_FORGE_HOME``, a folder or an fsspec URL (``s3://bucket/forge``)."""
    from retriever_forge.artifacts import ArtifactStore

    return ArtifactStore(_home(args))


class StepLineHandler(logging.Handler):
    """Dagster's event stream, condensed: one line per finished step, failed checks and warnings.

    Dagster's own console log (about a hundred DEBUG lines for the demo) is what ``-v`` shows.
    """

    def __init__(self, stream=None):
        super().__init__(logging.DEBUG)
        self.stream = stream or sys.stdout
        self.started: dict[str, float] = {}

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def emit(self, record: logging.LogRecord) -> None:
        import time

        meta = getattr(record, "dagster_meta", None) or {}
        event, step = meta.get("dagster_event"), meta.get("step_key") or ""
        if event is None:
            if record.levelno >= logging.WARNING:
                self._print(f"  warning [{step or 'run'}]: {meta.get('orig_message', record.getMessage())}")
            return
        kind = event.event_type_value
        if kind == "STEP_START":
            self.started[step] = time.perf_counter()
        elif kind == "STEP_SUCCESS":
            seconds = time.perf_counter() - self.started.get(step, time.perf_counter())
            self._print(f"✓ {step:<24} {seconds:7.1f} s")
        elif kind == "STEP_FAILURE":
            error = getattr(event.event_specific_data, "error", None)
            while error is not None and error.cause is not None:  # the user code's own error, not Dagster's wrapper
                error = error.cause
            self._print(f"✗ {step}: {error.message.strip() if error else 'failed'}")
        elif kind == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data
            if not data.passed:
                self._print(f"  check {data.check_name} on {data.asset_key.to_user_string()}: "
                            f"{'FAILED' if data.severity.value == 'ERROR' else 'warns'}")  # fmt: skip


def _quiet_job(job):
    """The job with a logger that prints :class:`StepLineHandler` lines instead of Dagster's console log."""
    import dagster as dg

    @dg.logger(description="One line per step (retriever-forge run without -v).")
    def step_lines(_init_context):
        log = logging.getLogger("retriever_forge.run")
        log.handlers, log.propagate = [StepLineHandler()], False
        log.setLevel(logging.DEBUG)
        return log

    return job.with_logger_defs({**job.loggers, "step_lines": step_lines}), {"step_lines": {}}


def cmd_run(args) -> int:
    import warnings

    import yaml

    _dagster_home()
    if not args.verbose:
        # Library deprecation notices (torch, transformers) say nothing about this run; -v shows them.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".* is currently in beta")  # Dagster's BetaWarning on our own definitions
        os.environ.setdefault("RETRIEVER_FORGE_PROGRESS", "1")
        # Per-load progress bars of transformers/huggingface_hub ("Loading weights", "Writing model
        # shards") and their deprecation notices: a dozen lines a run; the step lines say what ran.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            import transformers

            transformers.utils.logging.disable_progress_bar()
            transformers.utils.logging.set_verbosity_error()
        except ImportError:
            pass
    import dagster as dg

    from retriever_forge.orchestration.definitions import defs

    run_config = {}
    if args.config:
        run_config = yaml.safe_load(Path(args.config).read_text()) or {}
    if args.budget:
        from retriever_forge.budget import with_budget

        with_budget(run_config, args.budget)
    from retriever_forge.datasets import load_registry
    from retriever_forge.orchestration.assets.common import sync_dataset_partitions

    registry = load_registry()
    if args.dataset not in registry:
        print(f"unknown dataset {args.dataset!r}; datasets file lists: {sorted(registry)}", file=sys.stderr)
        return 2
    instance = dg.DagsterInstance.get()
    sync_dataset_partitions(instance, registry, remove=False)  # another datasets file must not drop the instance's partitions
    job = defs.resolve_job_def(args.job)
    if not args.verbose and "loggers" not in run_config:
        job, loggers = _quiet_job(job)
        # Dataset overrides need no copying here: each asset applies them (assets.common.effective_config).
        run_config = {**run_config, "loggers": loggers}
        print(f"retriever-forge run: dataset {args.dataset!r}, job {args.job} (-v for Dagster's full log)")
    result = job.execute_in_process(partition_key=args.dataset, run_config=run_config, instance=instance, raise_on_error=False)
    if not result.success:
        print(f"run {result.run_id} failed; see the Dagster UI or the log above", file=sys.stderr)
        return 1
    store = _store()
    board = store.scoreboard_path(args.dataset, "md")
    if store.fs.exists(board):
        print("\n" + store.read_text(board))
        print(f"Scoreboard: {store.url(board)}")
    print(f"Run {result.run_id} succeeded. Artifacts: {_store().root}")
    return 0


def _resolve_target(store, target: list[str]) -> str:
    if len(target) <= 2 and not all(c in "0123456789abcdef" for c in target[0]):
        asset, partition = target[0], (target[1] if len(target) > 1 else "demo")
        return store.read_pointer(asset, partition).hash
    return target[0]


def cmd_trace(args) -> int:
    from retriever_forge.provenance import trace, trace_markdown

    store = _store(args)
    try:
        tree = trace(store, _resolve_target(store, args.target))
    except KeyError as e:
        print(f"trace: {e.args[0]}", file=sys.stderr)
        return 2
    print(json.dumps(tree, indent=1, default=str) if args.json else trace_markdown(tree))
    return 0


def cmd_verify(args) -> int:
    from retriever_forge.provenance import verify

    store = _store(args)
    results = verify(store)
    bad = [r for r in results if not r["ok"]]
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in bad:
            print(f"MISMATCH {r['asset']} {r['hash'][:16]} -> {str(r['actual'])[:16]} at {r['path']}")
        print(f"{len(results) - len(bad)} artifacts ok, {len(bad)} corrupted or missing")
        partial = store.partial_writes()
        if partial:  # left by killed writers; never read as artifacts
            print(f"{len(partial)} unfinished writes (hidden temporary files of killed runs; safe to delete), e.g. {partial[0]}")
    return 1 if bad else 0


def _scoreboard_rows(store, scores_hash: str) -> list[dict] | None:
    """The rows of the scoreboard on disk for this benchmark artifact (extra fields such as significance)."""
    return next((b.get("systems") for b in store.iter_scoreboards() if b.get("artifact_hash") == scores_hash), None)


def cmd_model_card(args) -> int:
    """Copy a benchmarked fine-tuned model to a folder whose card includes its scoreboard."""
    import shutil

    from retriever_forge.audit import scoreboard
    from retriever_forge.model_card import write_model_card
    from retriever_forge.provenance import resolve

    store = _store(args)
    try:
        scores_ref, scores = resolve(store, _resolve_target(store, args.target))
        if scores.get("asset") != "benchmark_scores":
            raise KeyError(
                f"{args.target}: a benchmark_scores artifact is needed (it names the model it scored), not {scores.get('asset')}"
            )
        model_ref, model = resolve(store, scores["upstream"]["fine_tuned_encoder"]["hash"])
    except KeyError as e:
        print(f"model-card: {e.args[0]}", file=sys.stderr)
        return 2
    facts = (model.get("extra") or {}).get("model_card")
    if not facts:
        print(f"model-card: the model {model_ref.hash[:16]} was published before model cards were recorded", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"model-card: {out} exists and is not empty", file=sys.stderr)
        return 2
    shutil.copytree(store.local_path(model_ref), out, dirs_exist_ok=True)
    rows = scoreboard(store, scores_ref, _scoreboard_rows(store, scores_ref.hash))
    judged = (rows or [{}])[0].get("judgments")
    lineage = dict(facts.get("lineage") or {})
    lineage["artifacts"] = {**(lineage.get("artifacts") or {}), "fine_tuned_encoder": {"hash": model_ref.hash},
                            "benchmark_scores": {"hash": scores_ref.hash}}  # fmt: skip
    write_model_card(out, {**facts, "scoreboard": rows, "scoreboard_judgments": judged, "lineage": lineage})
    print(f"model with its card and scoreboard: {out.resolve()}")
    return 0


def cmd_audit(args) -> int:
    """The audit report of one artifact; exit 1 when any artifact in its lineage fails verification."""
    from retriever_forge.audit import audit_html, audit_markdown, build_audit, lineage_graph
    from retriever_forge.orchestration.assets.run_records import asset_check_results, config_defaults, instance_from_env

    store = _store(args)
    try:
        target = _resolve_target(store, args.target)
        run_ids = {n["manifest"].get("run_id") for n in lineage_graph(store, target).values()}
    except KeyError as e:
        print(f"audit: {e.args[0]}", file=sys.stderr)
        return 2
    instance, note = instance_from_env()
    checks = None
    if instance is not None:
        checks = asset_check_results(instance, run_ids)
        if not checks:
            note = f"{note}: it holds no asset check results for the {len(run_ids)} run(s) of this lineage (were they run on another instance?)"
    report = build_audit(store, target, config_defaults=config_defaults(), check_results=checks, checks_note=note,
                         scoreboard_extra=_scoreboard_rows(store, target))  # fmt: skip
    text = audit_markdown(report) if args.format == "md" else audit_html(report)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"audit report: {Path(args.out).resolve()}")
    else:
        print(text)
    for f in report["failures"]:
        for p in f["problems"]:
            print(f"VERIFICATION FAILED {f['asset']} {f['hash'][:16]}: {p['issue']} {p['file']}", file=sys.stderr)
    return 1 if report["failures"] else 0


def cmd_diff(args) -> int:
    """The first points where two artifacts' lineages diverge, and the score deltas."""
    from retriever_forge.lineage_diff import diff_lineages, diff_text

    store = _store(args)
    try:
        # "asset/partition" names the latest materialization; anything else is a hash prefix.
        a, b = (_resolve_target(store, t.split("/", 1)) if "/" in t else t for t in (args.a, args.b))
        result = diff_lineages(store, a, b)
    except (KeyError, ValueError) as e:
        print(f"diff: {e.args[0]}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1, default=str) if args.json else diff_text(result))
    return 0


def cmd_lineage_export(args) -> int:
    """OpenLineage START/COMPLETE events of stored artifacts (a target's lineage, or the whole store), as JSON lines."""
    from retriever_forge.audit import lineage_graph, topological
    from retriever_forge.openlineage_events import artifact_events, event_json
    from retriever_forge.orchestration.assets.run_records import asset_check_results, instance_from_env

    store = _store(args)
    try:
        if args.target:
            graph = lineage_graph(store, _resolve_target(store, args.target))
            items = [(graph[h]["ref"], graph[h]["manifest"]) for h in topological(graph)]
        else:
            items = sorted(store.iter_refs(), key=lambda rm: (rm[1].get("finished_at") or "", rm[1].get("asset") or ""))
    except KeyError as e:
        print(f"lineage export: {e.args[0]}", file=sys.stderr)
        return 2
    instance, note = instance_from_env()
    checks = asset_check_results(instance, {m.get("run_id") for _, m in items}) if instance is not None else []
    lines = []
    for ref, manifest in items:
        mine = [c for c in checks if c["asset"] == manifest.get("asset") and c["run_id"] == manifest.get("run_id")]
        lines += [event_json(e) for e in artifact_events(store, ref, manifest, mine)]
    text = "".join(line + "\n" for line in lines)
    if args.out:
        Path(args.out).write_text(text)
        print(f"{len(lines)} OpenLineage events of {len(items)} artifacts: {args.out} ({note})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_datasets(args) -> int:
    """``datasets add|list|remove``: edit the datasets file and register the partition at once."""
    _dagster_home()
    import dagster as dg

    from retriever_forge.datasets import DatasetError, DatasetSpec, add_dataset, datasets_file, load_registry, remove_dataset
    from retriever_forge.fingerprint import check_readable
    from retriever_forge.orchestration.assets.common import DATASET_PARTITIONS

    instance = dg.DagsterInstance.get()
    try:
        if args.action == "add":
            entry = _dataset_entry(args)
            if entry["source"] != "ir_datasets":  # a typo in a path is refused now, not found at night
                check_readable(DatasetSpec(name=args.name, **entry))
            spec = add_dataset(args.name, entry)
            if not instance.has_dynamic_partition(DATASET_PARTITIONS, spec.name):
                instance.add_dynamic_partitions(DATASET_PARTITIONS, [spec.name])
            print(f"added dataset {spec.name!r} ({spec.source}) to {datasets_file()}; partition registered")
        elif args.action == "remove":
            remove_dataset(args.name)
            if instance.has_dynamic_partition(DATASET_PARTITIONS, args.name):
                instance.delete_dynamic_partition(DATASET_PARTITIONS, args.name)
            print(f"removed dataset {args.name!r} from {datasets_file()} (its artifacts stay in the store)")
        else:
            registered = set(instance.get_dynamic_partitions(DATASET_PARTITIONS))
            for name, spec in sorted(load_registry().items()):
                where = spec.path or spec.corpus or spec.id or spec.source
                state = "ok"
                try:
                    if spec.source != "ir_datasets":  # an ir_datasets id is checked when observed (it may try a download)
                        check_readable(spec)
                except DatasetError as e:
                    state = f"UNREADABLE: {str(e).splitlines()[0]}"
                print(f"{name:<20} {spec.source:<12} {'registered' if name in registered else 'not registered':<15} {where}  {state}")
    except DatasetError as e:
        print(f"datasets {args.action}: {e}", file=sys.stderr)
        return 2
    return 0


def _dataset_entry(args) -> dict:
    if args.beir:
        entry = {"source": "beir", "path": str(Path(args.beir).expanduser().resolve())}
    elif args.files:
        entry = {"source": "files", "corpus": str(Path(args.files[0]).expanduser().resolve())}
        for key, value in zip(("queries", "qrels"), args.files[1:], strict=False):
            entry[key] = str(Path(value).expanduser().resolve())
        for key in ("id_field", "title_field", "text_field"):
            if getattr(args, key):
                entry[key] = getattr(args, key)
    else:
        entry = {"source": "ir_datasets", "id": args.ir_datasets}
    if args.split:
        entry["split"] = args.split
    if args.description:
        entry["description"] = args.description
    return entry


def cmd_search(args) -> int:
    from dataclasses import asdict

    from retriever_forge.serving import MissingArtifact, format_hits, search

    try:
        hits = search(_home(args), args.dataset, args.query, system=args.system, k=args.k)
    except (MissingArtifact, ValueError) as e:
        print(f"search: {e.args[0]}", file=sys.stderr)
        return 2
    print(json.dumps([asdict(h) for h in hits], indent=1) if args.json else format_hits(hits))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="retriever-forge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize the graph for one dataset")
    run.add_argument("--dataset", default="demo", help="a dataset name from datasets.yaml (default: demo)")
    run.add_argument("-c", "--config", help="Dagster run config YAML (ops: {asset: {config: {...}}})")
    run.add_argument(
        "--budget",
        choices=["quick", "standard", "thorough"],
        help="budget preset (default: the dataset's in datasets.yaml, else standard); see retriever_forge/budget.py",
    )
    run.add_argument("--job", default="adapt_retriever", help="job name (default: the whole graph)")
    run.add_argument("-v", "--verbose", action="store_true", help="Dagster's full console log instead of one line per step")
    run.set_defaults(func=cmd_run)
    tr = sub.add_parser("trace", help="print an artifact's upstream lineage")
    tr.add_argument("target", nargs="+", help="artifact hash (prefix), or asset key [partition]")
    tr.add_argument("--json", action="store_true")
    tr.add_argument("--home", help="artifact store root, a folder or fsspec URL (default: $RETRIEVER_FORGE_HOME or .forge)")
    tr.set_defaults(func=cmd_trace)
    ve = sub.add_parser("verify", help="re-hash stored artifacts and report mismatches")
    ve.add_argument("--json", action="store_true")
    ve.add_argument("--home", help="artifact store root, a folder or fsspec URL (default: $RETRIEVER_FORGE_HOME or .forge)")
    ve.set_defaults(func=cmd_verify)
    au = sub.add_parser("audit", help="an auditor's report of an artifact: lineage graph, verification, prompts, samples, checks")
    au.add_argument("target", nargs="+", help="artifact hash (prefix), or asset key [partition]")
    au.add_argument("--out", help="write the report here (default: print it)")
    au.add_argument("--format", choices=["html", "md"], default="html")
    au.add_argument("--home", help="artifact store root (default: $RETRIEVER_FORGE_HOME or .forge)")
    au.set_defaults(func=cmd_audit)
    di = sub.add_parser("diff", help="why two artifacts of one asset differ: first points of divergence, score deltas")
    di.add_argument("a", help="artifact hash (prefix), or asset/partition for the latest")
    di.add_argument("b", help="artifact hash (prefix), or asset/partition for the latest")
    di.add_argument("--json", action="store_true")
    di.add_argument("--home", help="artifact store root (default: $RETRIEVER_FORGE_HOME or .forge)")
    di.set_defaults(func=cmd_diff)
    mc = sub.add_parser("model-card", help="copy a benchmarked fine-tuned model to a folder whose model card has its scoreboard")
    mc.add_argument("target", nargs="+", help="benchmark_scores hash (prefix), or benchmark_scores [partition]")
    mc.add_argument("--out", required=True, help="folder to write (must be empty or absent)")
    mc.add_argument("--home", help="artifact store root (default: $RETRIEVER_FORGE_HOME or .forge)")
    mc.set_defaults(func=cmd_model_card)
    li = sub.add_parser("lineage", help="lineage of stored artifacts for other tools")
    li_sub = li.add_subparsers(dest="lineage_command", required=True)
    ex = li_sub.add_parser("export", help="OpenLineage RunEvents (START/COMPLETE) of stored artifacts as JSON lines")
    ex.add_argument("target", nargs="*", help="artifact hash (prefix), or asset key [partition]; default: every artifact")
    ex.add_argument("--format", choices=["openlineage"], default="openlineage")
    ex.add_argument("--out", help="write the JSON lines here (default: stdout)")
    ex.add_argument("--home", help="artifact store root (default: $RETRIEVER_FORGE_HOME or .forge)")
    ex.set_defaults(func=cmd_lineage_export)
    ds = sub.add_parser("datasets", help="add, list or remove datasets (no code-location reload needed)")
    ds_sub = ds.add_subparsers(dest="action", required=True)
    add = ds_sub.add_parser("add", help="add a dataset to the datasets file and register its partition")
    add.add_argument("name", help="dataset name (letters, digits, '_', '.', '-'); becomes the partition key")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--beir", metavar="FOLDER", help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    source.add_argument("--files", nargs="+", metavar="FILE", help="CORPUS [QUERIES [QRELS]] (.jsonl/.parquet; qrels .tsv/.jsonl)")
    source.add_argument("--ir-datasets", metavar="ID", help="an ir_datasets id, e.g. beir/scifact/test (cached or downloadable)")
    add.add_argument("--split", help="qrels split (default: test)")
    add.add_argument("--id-field", help="files: the id field (default: _id)")
    add.add_argument("--title-field", help="files: the title field (default: title)")
    add.add_argument("--text-field", help="files: the text field (default: text)")
    add.add_argument("--description", help="a line shown in `datasets list` and the UI")
    rm = ds_sub.add_parser("remove", help="remove a dataset from the datasets file and delete its partition")
    rm.add_argument("name")
    ds_sub.add_parser("list", help="the datasets, whether each is registered and readable")
    ds.set_defaults(func=cmd_datasets)
    se = sub.add_parser("search", help="search the latest index of a dataset")
    se.add_argument("query", help="the query text")
    se.add_argument("--dataset", default="demo", help="a dataset name from datasets.yaml (default: demo)")
    se.add_argument("--system", default="fine-tuned", choices=["fine-tuned", "base", "bm25", "hybrid"])
    se.add_argument("-k", type=int, default=10, help="passages to print (default: 10)")
    se.add_argument("--json", action="store_true")
    se.add_argument("--home", help="artifact store root (default: $RETRIEVER_FORGE_HOME or .forge)")
    se.set_defaults(func=cmd_search)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
