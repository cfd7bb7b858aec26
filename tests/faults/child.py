"""A pipeline stage run in its own process so a test can SIGKILL it at a chosen point.

Usage: ``python child.py STAGE WORKDIR [ARGS]``. At its kill point the stage writes
``WORKDIR/KILL_ME`` and stalls; the parent test kills it with SIGKILL, then reruns the stage.
The store lives in ``WORKDIR/store``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.faults import helpers


def main(stage: str, workdir: str, *args: str) -> None:
    work = Path(workdir)
    store = work / "store"
    if stage == "generation":
        # Two batches commit to the cache; the third one stalls inside the backend.
        def progress(message: str) -> None:
            if message.startswith(f"{helpers.HashLLM.model_id}: 6/"):
                helpers.mark_and_stall(work)

        helpers.run_generation(work, store, helpers.HashLLM(), progress=progress)
    elif stage == "mining":
        where = args[0]
        if where == "search":  # the second chunk of queries stalls mid-search
            from retriever_forge import mining

            real, calls = mining.search_index, []

            def search_index(index, queries, k, **kwargs):
                calls.append(1)
                if len(calls) == 2:
                    helpers.mark_and_stall(work)
                return real(index, queries, k, **kwargs)

            mining.search_index = search_index
        elif where == "write":  # the table's bytes are half written when the process dies
            from retriever_forge.artifacts import ArtifactStore

            real_write_once = ArtifactStore._write_once

            def write_once(self, ref, write_tmp):
                def half_then_stall(tmp):
                    with self.fs.open(tmp, "wb") as f:
                        f.write(b"PAR1" + b"\0" * 64)
                        f.flush()
                        helpers.mark_and_stall(work)

                return real_write_once(self, ref, half_then_stall)

            ArtifactStore._write_once = write_once
        helpers.run_mining(store)
    elif stage == "indexing":
        real_copy, copied = shutil.copy2, []

        def copy2(src, dst, **kwargs):  # the index folder is half copied into the store
            if copied:
                helpers.mark_and_stall(work)
            copied.append(src)
            return real_copy(src, dst, **kwargs)

        real_copytree = shutil.copytree
        shutil.copytree = lambda src, dst, **kw: real_copytree(src, dst, copy_function=copy2, **kw)
        helpers.run_indexing(work, store)
    elif stage == "training":

        def progress(event: dict) -> None:  # killed after step 5; checkpoints exist for steps 2 and 4
            if event["step"] == 5:
                helpers.mark_and_stall(work)

        helpers.run_training(args[0], work, store, progress=progress)
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    raise SystemExit("finished without reaching the kill point")


if __name__ == "__main__":
    main(*sys.argv[1:])
