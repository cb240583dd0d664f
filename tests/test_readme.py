"""The README tells the truth: its API table matches the real signatures, its commands are the ones CI runs."""

from __future__ import annotations

import ast
import inspect
import re

import pytest
from conftest import ROOT

import colabkit

README = (ROOT / "README.md").read_text()
TEST_COMMAND = 'python3 -m pip install -e ".[test]" && python3 -m pytest'
MAIN_COMMAND = "python3 -m pip install . && python3 -m colabkit demo"


_NO_DEFAULT = object()


def _table_calls() -> list[tuple[str, dict[str, object]]]:
    """Each call of the README's API table with its parameters and the defaults it shows for them."""
    calls = []
    for row in README.splitlines():
        if not row.startswith("| `"):
            continue
        for name, params in re.findall(r"`(\w+)\(([^`]*)\)`", row.split("|")[1]):
            shown: dict[str, object] = {}
            for part in params.split(","):
                part = part.strip()
                if part in ("", "*", "...") or part.startswith("*"):
                    continue
                key, eq, value = part.partition("=")
                shown[key.strip()] = ast.literal_eval(value.strip()) if eq else _NO_DEFAULT
            calls.append((name, shown))
    return calls


def test_the_api_table_lists_real_calls_with_their_defaults():
    calls = _table_calls()
    assert {name for name, _ in calls} >= {"setup", "mount", "project", "run", "stage", "save", "runs", "load"}
    for name, shown in calls:
        signature = inspect.signature(getattr(colabkit, name))
        unknown = [p for p in shown if p not in signature.parameters]
        assert not unknown, f"README's {name}() names parameters it does not have: {unknown}"
        for param, default in shown.items():
            real = signature.parameters[param].default
            if default is _NO_DEFAULT:
                assert real is inspect.Parameter.empty, f"README shows {name}({param}) without its default {real!r}"
            else:
                assert default == real and type(default) is type(real), (
                    f"README's {name}() shows {param}={default!r}, the real default is {real!r}"
                )


def test_every_public_call_is_in_the_api_table():
    listed = {name for name, _ in _table_calls()}
    calls = {n for n in colabkit.__all__ if n[0].islower() and not n.startswith("__")}
    assert calls - listed == set(), f"public calls missing from README's API table: {sorted(calls - listed)}"


@pytest.mark.parametrize("command", [TEST_COMMAND, MAIN_COMMAND])
def test_newcomer_commands_are_in_the_readme(command):
    assert command in README


def test_ci_runs_the_readme_test_command():
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()
