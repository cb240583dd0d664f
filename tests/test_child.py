"""``python -m colabkit._child SCRIPT`` behaves exactly like ``python SCRIPT``, and reports torch's peaks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

INFO = """
import json, sys, pickle
import helper

class Point:
    pass

print(json.dumps({
    "argv": sys.argv,
    "file": __file__,
    "name": __name__,
    "path0": sys.path[0],
    "helper": helper.VALUE,
    "main_is_me": sys.modules["__main__"].__dict__ is globals(),
    "package": __package__,
    "spec": repr(__spec__),
    "doc": __doc__,
    "pickles": type(pickle.loads(pickle.dumps(Point()))).__name__,
    "colabkit_env": [k for k in __import__("os").environ if k.startswith("COLABKIT_CHILD")],
}))
"""


def both(
    script: Path, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """Run ``python SCRIPT ARGS`` and ``python -m colabkit._child SCRIPT ARGS`` the same way.

    Each leads its own process group, as under ``run()``, so the bootstrap's watchdog thread runs.
    """
    rel = str(script.relative_to(cwd)) if script.is_relative_to(cwd) else str(script)
    plain = subprocess.run(
        [sys.executable, rel, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        start_new_session=True,
    )
    boot = subprocess.run(
        [sys.executable, "-m", "colabkit._child", rel, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        start_new_session=True,
    )
    return plain, boot


@pytest.fixture
def proj(tmp_path):
    folder = tmp_path / "proj" / "sub"
    folder.mkdir(parents=True)
    (folder / "helper.py").write_text("VALUE = 'next to the script'\n")
    return folder


def test_argv_file_name_path_and_imports_match_plain_python(proj, tmp_path):
    script = proj / "info.py"
    script.write_text(INFO)
    plain, boot = both(script, "--epochs", "3", "a b", cwd=tmp_path / "proj")
    assert plain.returncode == boot.returncode == 0, boot.stderr
    expected = json.loads(plain.stdout)
    assert json.loads(boot.stdout) == expected
    assert expected["argv"] == ["sub/info.py", "--epochs", "3", "a b"]
    assert expected["name"] == "__main__" and expected["helper"] == "next to the script"
    assert expected["path0"] == str(proj) and expected["file"] == str(script)
    assert boot.stderr == ""


@pytest.mark.parametrize(
    "body",
    [
        "import sys; sys.exit(3)",
        "import sys; sys.exit('bad config: lr must be > 0')",
        "import sys; sys.exit(None)",
        "raise SystemExit(0)",
        "import os; os._exit(7)",
        "print('done')",
    ],
)
def test_exit_status_and_message_match_plain_python(proj, body):
    script = proj / "exits.py"
    script.write_text(body + "\n")
    plain, boot = both(script, cwd=proj)
    assert (boot.returncode, boot.stdout, boot.stderr) == (plain.returncode, plain.stdout, plain.stderr)


def test_traceback_matches_plain_python_without_bootstrap_frames(proj):
    script = proj / "crash.py"
    script.write_text(
        textwrap.dedent(
            """
            import helper

            def inner(x):
                return 1 / x

            try:
                inner(0)
            except ZeroDivisionError as exc:
                raise ValueError("wrapped") from exc
            """
        )
    )
    plain, boot = both(script, cwd=proj)
    assert plain.returncode == boot.returncode == 1
    assert boot.stderr == plain.stderr
    assert "colabkit" not in boot.stderr and "runpy" not in boot.stderr
    assert 'crash.py", line 5, in inner' in boot.stderr


def test_syntax_error_matches_plain_python(proj):
    script = proj / "broken.py"
    script.write_text("x = (1,\n")
    plain, boot = both(script, cwd=proj)
    assert plain.returncode == boot.returncode == 1
    assert boot.stderr == plain.stderr


def test_uncaught_keyboard_interrupt_dies_of_sigint_like_python(proj):
    script = proj / "ctrlc.py"
    script.write_text("raise KeyboardInterrupt\n")
    plain, boot = both(script, cwd=proj)
    assert plain.returncode == boot.returncode == -2
    assert boot.stderr == plain.stderr


def test_missing_script_exits_2_like_python(proj):
    plain, boot = both(proj / "nope.py", cwd=proj)
    assert plain.returncode == boot.returncode == 2
    assert "can't open file" in boot.stderr and "nope.py" in boot.stderr


FAKE_TORCH = """
import os
open(os.environ["TORCH_IMPORTED_MARK"], "w").close()
__version__ = "9.9.9-fake"

class cuda:
    initialised = True

    @staticmethod
    def is_initialized():
        return cuda.initialised

    @staticmethod
    def device_count():
        return 2

    @staticmethod
    def max_memory_allocated(i):
        return [1_000_000_000, 123][i]

    @staticmethod
    def max_memory_reserved(i):
        return [1_200_000_000, 2048][i]
"""


def _with_fake_torch(proj, tmp_path):
    (proj / "torch.py").write_text(FAKE_TORCH)
    mark = tmp_path / "torch-imported"
    report = tmp_path / "report.json"
    env = {**__import__("os").environ, "TORCH_IMPORTED_MARK": str(mark), "COLABKIT_CHILD_REPORT": str(report)}
    return mark, report, env


def test_framework_peaks_are_reported_when_the_script_used_torch_cuda(proj, tmp_path):
    mark, report, env = _with_fake_torch(proj, tmp_path)
    script = proj / "train.py"
    script.write_text("import atexit, torch\natexit.register(print, 'script atexit ran')\n")
    boot = subprocess.run(
        [sys.executable, "-m", "colabkit._child", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert boot.returncode == 0, boot.stderr
    assert boot.stdout == "script atexit ran\n"
    assert json.loads(report.read_text()) == {
        "framework": "torch",
        "version": "9.9.9-fake",
        "devices": [
            {"index": 0, "max_memory_allocated": 1_000_000_000, "max_memory_reserved": 1_200_000_000},
            {"index": 1, "max_memory_allocated": 123, "max_memory_reserved": 2048},
        ],
    }


def test_no_report_and_no_torch_import_when_the_script_did_not_use_it(proj, tmp_path):
    mark, report, env = _with_fake_torch(proj, tmp_path)
    script = proj / "plain.py"
    script.write_text("import sys; sys.exit(4)\n")
    boot = subprocess.run(
        [sys.executable, "-m", "colabkit._child", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert boot.returncode == 4
    assert not mark.exists()  # the bootstrap never imported torch itself
    assert not report.exists()


def test_no_report_when_torch_never_initialised_cuda(proj, tmp_path):
    mark, report, env = _with_fake_torch(proj, tmp_path)
    script = proj / "cpu.py"
    script.write_text("import torch\ntorch.cuda.initialised = False\n")
    boot = subprocess.run(
        [sys.executable, "-m", "colabkit._child", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert boot.returncode == 0, boot.stderr
    assert mark.exists() and not report.exists()


def test_multiprocessing_spawn_finds_functions_defined_in_the_script(proj):
    script = proj / "pool.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing as mp

            def square(x):
                return x * x

            if __name__ == "__main__":
                with mp.get_context("spawn").Pool(1) as pool:
                    print(pool.map(square, [1, 2, 3]))
            """
        )
    )
    plain, boot = both(script, cwd=proj)
    assert (boot.returncode, boot.stdout, boot.stderr) == (plain.returncode, plain.stdout, plain.stderr)
    assert boot.stdout == "[1, 4, 9]\n"


def test_the_bootstrap_adds_no_thread_and_no_signal_handler(proj):
    """Promise: ``python -m colabkit._child SCRIPT`` is ``python SCRIPT`` (the supervisor, not a thread, watches the launcher)."""
    script = proj / "threads.py"
    script.write_text(
        "import signal, threading\n"
        "print(sorted((t.name, t.daemon) for t in threading.enumerate()))\n"
        "print([signal.getsignal(s) is signal.default_int_handler for s in (signal.SIGINT,)])\n"
        "print([signal.getsignal(s) == signal.SIG_DFL for s in (signal.SIGTERM, signal.SIGHUP)])\n"
    )
    plain, boot = both(script, cwd=proj)
    assert plain.stdout == "[('MainThread', False)]\n[True]\n[True, True]\n"
    assert boot.stdout == plain.stdout
