"""The docs cannot rot: their Python examples run, and their parameter tables match the models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from resilience import PluginHost
from resilience._reference import render_parameter_tables

from .conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def python_blocks(path: Path) -> list[str]:
    return _BLOCK.findall(path.read_text())


@pytest.mark.parametrize("path", [p for p in DOCS if python_blocks(p)], ids=lambda p: p.name)
def test_every_python_example_runs(
    path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)  # examples name policies.yaml as a user in the project would
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    for number, block in enumerate(python_blocks(path), 1):
        code = compile(block, f"{path.name} example {number}", "exec", dont_inherit=True)
        exec(code, namespace)  # running our own documentation is the point


@pytest.mark.parametrize("page", ["policies.md", "sources.md", "operations.md", "observability.md"])
def test_parameter_tables_match_the_models(page: str) -> None:
    text = (ROOT / "docs" / page).read_text()
    assert text == render_parameter_tables(text, PluginHost(entry_points_=[])), (
        f"docs/{page} drifted from the parameter models: "
        f"run python -m resilience._reference docs/{page}"
    )


def test_every_builtin_step_has_a_table() -> None:
    text = (ROOT / "docs" / "policies.md").read_text()
    for name in PluginHost(entry_points_=[]).names():
        assert f"<!-- params:{name} -->" in text, name
