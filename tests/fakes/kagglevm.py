"""A fake Kaggle machine for tests: ``$KAGGLE_KERNEL_RUN_TYPE``, ``/kaggle/input`` (datasets, read-only on Kaggle)
and ``/kaggle/working`` under a sysroot of the test's own, ``/proc/uptime`` and the container's pid 1, and the
fake ``kaggle_secrets`` importable (so is the fake ``google.colab``: Kaggle's image is built on Colab's)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fakes.colabvm import use_fake_colab


@dataclass
class FakeKaggle:
    sysroot: Path

    @property
    def input(self) -> Path:
        return self.sysroot / "kaggle" / "input"

    @property
    def working(self) -> Path:
        return self.sysroot / "kaggle" / "working"

    def dataset(self, slug: str) -> Path:
        """A dataset attached to the notebook (read-only on Kaggle; a plain folder here)."""
        path = self.input / slug
        path.mkdir(parents=True, exist_ok=True)
        return path

    def secret_calls(self) -> list[str]:
        log = self.sysroot / "kaggle-fake-calls.log"
        return log.read_text().splitlines() if log.exists() else []


def make_kaggle(
    tmp_path: Path, monkeypatch, *, run_type: str = "Interactive", uptime_s: float = 7200.5, session_s: float = 3600.0
) -> FakeKaggle:
    """The machine: up ``uptime_s``, its container (pid 1) started ``session_s`` ago; the notebook's cwd is
    ``/kaggle/working``; secrets enabled (``KAGGLE_USER_SECRETS_TOKEN``) with none attached yet."""
    root = tmp_path / "kaggle-vm"
    (root / "kaggle" / "input").mkdir(parents=True)
    (root / "kaggle" / "working").mkdir(parents=True)
    (root / "proc" / "1").mkdir(parents=True)
    (root / "proc" / "uptime").write_text(f"{uptime_s:.2f} 100.00\n")
    ticks = round((uptime_s - session_s) * os.sysconf("SC_CLK_TCK"))
    fields = ["S", "0", "1", "1", "0", "-1", "4194560"] + ["0"] * 12 + [str(ticks), "1000", "100"]
    (root / "proc" / "1" / "stat").write_text(f"1 (tini (init)) {' '.join(fields)}\n")
    monkeypatch.setenv("COLABKIT_SYSROOT", str(root))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", run_type)
    monkeypatch.setenv("KAGGLE_URL_BASE", "https://www.kaggle.com")
    monkeypatch.setenv("KAGGLE_USER_SECRETS_TOKEN", "fake-jwt-for-tests")
    monkeypatch.chdir(root / "kaggle" / "working")
    use_fake_colab(monkeypatch)
    return FakeKaggle(root)
