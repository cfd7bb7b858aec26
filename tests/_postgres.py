"""A throwaway PostgreSQL server for tests: Debian's `postgresql` binaries, a new cluster in a
temporary folder (`initdb`), started with `pg_ctl` on a free port of 127.0.0.1, removed afterwards.

PostgreSQL refuses to run as root, so as root (CI) the cluster is owned by and run as ``nobody``
through ``runuser``. :func:`unavailable_reason` says why a server cannot start here (no binaries,
no unprivileged user), for a clear skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port

RUN_AS = "nobody"


def pg_bindir() -> Path | None:
    """The folder with `initdb` and `pg_ctl`: on PATH, else the newest /usr/lib/postgresql/<v>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _as_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", RUN_AS, "--", *cmd] if os.geteuid() == 0 else cmd


def unavailable_reason() -> str | None:
    if pg_bindir() is None:
        return "PostgreSQL binaries not found (install Debian's `postgresql` package; .ci/run does)"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root without `runuser`: PostgreSQL refuses to run as root"
    return None


@contextlib.contextmanager
def throwaway_postgres(db_name: str = "dagster"):
    """Yields a ``postgresql://`` URL of a fresh database on a fresh server; stops and removes it after."""
    bindir = pg_bindir()
    root = Path(tempfile.mkdtemp(prefix="forge-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, RUN_AS)
    os.chmod(root, 0o755)
    port = free_port()
    log = root / "server.log"
    subprocess.run(_as_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                             "--no-sync"]), check=True, capture_output=True, text=True)  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} -c fsync=off"
    subprocess.run(_as_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"]),
                   check=True, capture_output=True, text=True)  # fmt: skip
    try:
        subprocess.run(_as_user([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db_name]),
                       check=True, capture_output=True, text=True)  # fmt: skip
        yield f"postgresql://postgres@127.0.0.1:{port}/{db_name}"
    finally:
        subprocess.run(_as_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True)
        for _ in range(20):
            with contextlib.suppress(OSError):
                shutil.rmtree(root)
                break
            time.sleep(0.2)
