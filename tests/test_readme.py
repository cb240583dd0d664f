"""The README tells the truth: its API table matches the real signatures, its commands are the ones CI runs."""

from __future__ import annotations

import inspect
import re

import pytest
from conftest import ROOT

import colabkit

README = (ROOT / "README.md").read_text()
TEST_COMMAND = 'python3 -m pip install -e ".[test]" && python3 -m pytest'
MAIN_COMMAND = "python3 -m pip install . && python3 -m colabkit demo"


def _table_calls() -> list[tuple[str, list[str]]]:
    calls = []
    for row in README.splitlines():
        if not row.startswith("| `"):
            continue
        for name, params in re.findall(r"`(\w+)\(([^`]*)\)`", row.split("|")[1]):
            names = []
            for part in params.split(","):
                part = part.strip()
                if part in ("", "*", "...") or part.startswith("*"):
                    continue
                names.append(part.split("=")[0].strip())
            calls.append((name, names))
    return calls


def test_the_api_table_lists_real_calls():
    calls = _table_calls()
    assert {name for name, _ in calls} >= {"setup", "mount", "project", "run", "stage", "save", "runs"}
    for name, params in calls:
        signature = inspect.signature(getattr(colabkit, name))
        unknown = [p for p in params if p not in signature.parameters]
        assert not unknown, f"README's {name}() names parameters it does not have: {unknown}"


@pytest.mark.parametrize("command", [TEST_COMMAND, MAIN_COMMAND])
def test_newcomer_commands_are_in_the_readme(command):
    assert command in README


def test_ci_runs_the_readme_test_command():
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()
