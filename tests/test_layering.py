"""Layering: everything that imports Dagster lives in ``retriever_forge/orchestration/``.

The domain modules (every other ``.py`` under ``retriever_forge/``) import neither ``dagster``
nor any ``dagster_*`` package, nor anything from ``retriever_forge.orchestration``, at any
depth (a function-local import counts too).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "retriever_forge"
ORCHESTRATION = PACKAGE / "orchestration"


def _forbidden(module: str) -> bool:
    top = module.split(".")[0]
    return (
        top == "dagster"
        or top.startswith("dagster_")
        or module == "retriever_forge.orchestration"
        or module.startswith("retriever_forge.orchestration.")
    )


def _module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layering_violations(source: str, path: Path) -> list[str]:
    """``file:line: import`` for each import in ``source`` a domain module may not make."""
    here = _module_of(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from retriever_forge import orchestration` imports the package too
            names = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            if _forbidden(name):
                found.append((node.lineno, f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: imports {name}"))
                break
    return [text for _, text in sorted(found)]


def _domain_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if ORCHESTRATION not in p.parents)


def test_the_domain_modules_import_no_dagster_and_no_orchestration():
    files = _domain_files()
    assert len(files) > 20 and PACKAGE / "training.py" in files and not any("orchestration" in p.parts for p in files)
    problems = [v for p in files for v in layering_violations(p.read_text(), p)]
    assert problems == [], "domain modules must not import Dagster or retriever_forge.orchestration:\n" + "\n".join(problems)


def test_dagster_lives_in_orchestration():
    uses = [p for p in ORCHESTRATION.rglob("*.py") if "dagster" in p.read_text()]
    assert ORCHESTRATION / "definitions.py" in uses and ORCHESTRATION / "assets" / "training.py" in uses


def test_the_check_finds_what_it_should():
    domain = PACKAGE / "llm" / "base.py"
    bad = (
        "import dagster as dg\n"
        "import os, dagster_k8s\n"
        "from dagster import asset\n"
        "from dagster_pipes import open_dagster_pipes\n"
        "def f():\n    from retriever_forge.orchestration.resources import LLMResource\n"
        "from retriever_forge import orchestration\n"
        "from ..orchestration import cli\n"
        "from .. import orchestration\n"
    )
    assert [v.split(": imports ")[0] for v in layering_violations(bad, domain)] == [
        f"retriever_forge/llm/base.py:{line}" for line in (1, 2, 3, 4, 6, 7, 8, 9)
    ]
    fine = "import dagsterish\nfrom retriever_forge import schemas\nfrom . import cache\nfrom ..orchestrations import x\nimport numpy\n"
    assert layering_violations(fine, domain) == []
