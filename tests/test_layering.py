"""The engine never imports the run manager or the TUI (static and at run time)."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO

FORBIDDEN = ("dmltui", "textual", "tinydb", "typer")


def test_no_engine_module_imports_dmltui_statically():
    offenders = []
    for path in (REPO / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_engine_at_run_time_loads_no_manager_modules():
    code = (
        "import sys, engine.cli, engine.preflight, engine.trainer, engine.config, engine.metrics, engine.data.embedded;"
        "from engine.config.presets import resolve; resolve('quickstart');"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"
