"""runs(): finished, failed, interrupted, running, lost and unreadable runs, as text, HTML and on the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from colabkit import cli, history
from colabkit.errors import ProjectNotFound

BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
GIB = 2**30


def _summary(status: str, **extra) -> dict:
    data = {
        "schema": 1, "status": status, "script": "train.py", "args": [],
        "started": "2025-01-01T12:00:00+00:00", "ended": None, "duration_s": None, "returncode": None,
        "pid": 1, "pid_create_time": 0.0, "boot_id": BOOT_ID, "hostname": "vm",
        "peak_gpu_bytes": None, "gpu_total_bytes": None, "framework_peak_bytes": None,
        "attribution": None, "log": "output.log",
    }
    if status != "running":
        data.update(ended="2025-01-01T12:41:12+00:00", duration_s=2472.0, returncode=0 if status == "finished" else 1)
    data.update(extra)
    return data


def _write(project: Path, name: str, summary: dict | str | None) -> None:
    folder = project / "runs" / name
    folder.mkdir(parents=True)
    if isinstance(summary, dict):
        (folder / "summary.json").write_text(json.dumps(summary))
    elif isinstance(summary, str):
        (folder / "summary.json").write_text(summary)


@pytest.fixture
def alive():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield child.pid, psutil.Process(child.pid).create_time()
    child.stdin.close()
    child.wait(timeout=10)


@pytest.fixture
def dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    create_time = psutil.Process(child.pid).create_time()
    child.wait(timeout=10)
    return child.pid, create_time


def test_each_status_is_reported(tmp_path, alive, dead):
    project = tmp_path / "proj"
    _write(project, "20250101-120000-train", _summary("finished", peak_gpu_bytes=11 * GIB, gpu_total_bytes=15 * GIB))
    _write(project, "20250101-130000-train", _summary("failed", peak_gpu_bytes=int(14.9 * GIB)))
    _write(project, "20250101-140000-train", _summary("interrupted"))
    _write(project, "20250101-150000-train", _summary("running", pid=alive[0], pid_create_time=alive[1]))
    _write(project, "20250101-160000-train", _summary("running", pid=alive[0], pid_create_time=alive[1], boot_id="another-vm"))
    _write(project, "20250101-170000-train", _summary("running", pid=dead[0], pid_create_time=dead[1]))
    _write(project, "20250101-180000-train", _summary("running", pid=alive[0], pid_create_time=alive[1] - 100))
    _write(project, "20250101-190000-train", "{not json")
    _write(project, "20250101-200000-train", None)
    (project / "runs" / "notes.txt").write_text("not a run")

    listed = history.runs(project)
    assert [(r.name[9:15], r.status) for r in listed] == [
        ("120000", "finished"), ("130000", "failed"), ("140000", "interrupted"), ("150000", "running"),
        ("160000", "lost"),  # another boot
        ("170000", "lost"),  # its process is gone
        ("180000", "lost"),  # pid reused by another process
        ("190000", "unknown"), ("200000", "unknown"),
    ]
    finished = listed[0]
    assert finished.duration_s == 2472.0 and finished.returncode == 0 and finished.script == "train.py"
    assert finished.row()[2:] == (finished.started.astimezone().strftime("%Y-%m-%d %H:%M"), "41m12s", "11.0 GiB / 15.0 GiB")
    assert listed[1].row()[4] == "14.9 GiB"
    assert listed[3].duration_s is not None and listed[3].duration_s > 0  # a live run counts up to now
    assert listed[7].problem.startswith("summary.json: ")
    assert listed[8].row()[1:] == ("unknown", "n/a", "n/a", "n/a")


def test_text_table_and_html(tmp_path):
    project = tmp_path / "proj"
    _write(project, "20250101-120000-<b>", _summary("finished", peak_gpu_bytes=3 * GIB))
    text = repr(history.runs(project)).splitlines()
    assert text[0].split() == ["run", "status", "started", "duration", "peak", "GPU"]
    assert text[1].split()[:2] == ["20250101-120000-<b>", "finished"]
    assert text[1].endswith("41m12s    3.0 GiB")
    html = history.runs(project)._repr_html_()
    assert "20250101-120000-&lt;b&gt;" in html and "<b>" not in html
    assert html.count("<tr>") == 2


def test_empty_project_default_project_and_missing_project(tmp_path, monkeypatch):
    project = tmp_path / "proj"
    project.mkdir()
    assert len(history.runs(project)) == 0
    assert repr(history.runs(project)) == f"No runs yet in {project / 'runs'}"
    _write(project, "20250101-120000-train", _summary("finished"))
    try:
        from colabkit import projects
    except ImportError:
        pass
    else:  # another test may have opened a project in this process
        monkeypatch.setattr(projects, "current", lambda: None)
    monkeypatch.chdir(project)
    assert [r.status for r in history.runs()] == ["finished"]  # no open project: the current directory
    assert [r.status for r in history.runs(project / "runs")] == ["finished"]  # the runs folder itself
    with pytest.raises(ProjectNotFound, match="No project folder at .*nowhere") as info:
        history.runs(tmp_path / "nowhere")
    assert "Pass the project folder that holds the runs folder" in info.value.hint


def test_cli_lists_runs(tmp_path, capsys):
    project = tmp_path / "proj"
    _write(project, "20250101-120000-train", _summary("failed"))
    assert cli.main(["runs", str(project)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["run", "status"]
    assert lines[1].split()[:2] == ["20250101-120000-train", "failed"]
    assert cli.main(["runs", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err.startswith(f"colabkit runs: No project folder at {tmp_path / 'nowhere'}")
