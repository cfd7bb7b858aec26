"""End to end: wall time of the whole graph (``retriever-forge run``) per dataset.

Each run starts a fresh process with a fresh artifact store and Dagster instance (temporary
folders), so nothing is cached: ``cold`` is the first run; ``warm`` (``--warm``) repeats it on
the same store, where unchanged inputs reuse the generation cache and the embedding cache.
Peak RSS is the child process's (``RUSAGE_CHILDREN``).

    .venv/bin/python bench/end_to_end.py                                  # the offline demo
    .venv/bin/python bench/end_to_end.py --datasets cacm --config cacm=configs/cacm.yaml --warm

cacm takes ~30+ minutes of CPU on a 2-core machine. One JSON line per run, then a table.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Emitter, machine, markdown  # noqa: E402


def run_once(dataset: str, config: str | None, job: str, home: Path, dagster_home: Path) -> dict:
    cli = Path(sys.executable).parent / "retriever-forge"
    cmd = [str(cli) if cli.exists() else sys.executable, *([] if cli.exists() else ["-m", "retriever_forge.orchestration.cli"])]
    cmd += ["run", "--dataset", dataset, "--job", job] + (["-c", config] if config else [])
    env = {**os.environ, "RETRIEVER_FORGE_HOME": str(home), "DAGSTER_HOME": str(dagster_home)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {
        "seconds": round(seconds, 1),
        "cpu_seconds": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        "peak_rss_mb": round(after.ru_maxrss / 1024, 1),
        "command": " ".join(cmd[1:]),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="demo")
    ap.add_argument("--config", action="append", default=[], help="DATASET=run-config.yaml (e.g. cacm=configs/cacm.yaml)")
    ap.add_argument("--job", default="adapt_retriever", help="job to run (a stage job for a quick check)")
    ap.add_argument("--warm", action="store_true", help="also time a second run on the same store")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    configs = dict(c.split("=", 1) for c in args.config)
    emit = Emitter(args.out)
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
            home, dagster_home = Path(tmp) / "forge", Path(tmp) / "dagster"
            dagster_home.mkdir(parents=True)
            (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
            for setting in ["cold", "warm"] if args.warm else ["cold"]:
                row = run_once(name, configs.get(name), args.job, home, dagster_home)
                emit({"bench": "end_to_end", "dataset": name, "job": args.job, "setting": setting, **row, **machine()})
    print()
    print(markdown(emit.rows, ["dataset", "job", "setting", "seconds", "cpu_seconds", "peak_rss_mb"]))
    return emit.rows


if __name__ == "__main__":
    main()
