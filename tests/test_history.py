"""runs(): finished, failed, interrupted, running, lost and unreadable runs, as text, HTML and on the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
from fakes.colabvm import bindfs, kill_fuse

import colabkit
from colabkit import _history, _project, _runtime, cli
from colabkit.errors import MountError, ProjectNotFound

BOOT_ID = _runtime.boot_id()
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

    listed = _history.runs(project)
    assert [(r.name[9:15], r.status) for r in listed] == [
        ("120000", "finished"), ("130000", "failed"), ("140000", "interrupted"), ("150000", "running"),
        ("160000", "lost"),  # another boot
        ("170000", "lost"),  # its process is gone
        ("180000", "lost"),  # pid reused by another process
        ("190000", "unknown"), ("200000", "unknown"),
    ]
    finished = listed[0]
    assert finished.duration_s == 2472.0 and finished.returncode == 0 and finished.script == "train.py"
    assert finished.row()[2:] == (
        finished.started.astimezone().strftime("%Y-%m-%d %H:%M"), "41m12s", "11.0 GiB / 15.0 GiB", "finished"
    )
    assert listed[1].row()[4] == "14.9 GiB"
    assert listed[3].duration_s is not None and listed[3].duration_s > 0  # a live run counts up to now
    assert listed[7].problem.startswith("summary.json: ")
    assert listed[8].row()[1:5] == ("unknown", "n/a", "n/a", "n/a")
    assert [r.lost_why for r in listed[4:7]] == ["VM recycled", "its processes are gone", "its processes are gone"]


def test_text_table_and_html(tmp_path):
    project = tmp_path / "proj"
    _write(project, "20250101-120000-<b>", _summary("finished", peak_gpu_bytes=3 * GIB))
    text = str(_history.runs(project)).splitlines()
    assert text[0].split() == ["run", "status", "started", "duration", "peak", "GPU", "end"]
    assert text[1].split()[:2] == ["20250101-120000-<b>", "finished"]
    assert text[1].endswith("41m12s    3.0 GiB   finished")
    html = _history.runs(project)._repr_html_()
    assert "20250101-120000-&lt;b&gt;" in html and "<b>" not in html
    assert html.count("<tr>") == 2


def test_empty_project_default_project_and_missing_project(tmp_path, monkeypatch):
    project = tmp_path / "proj"
    project.mkdir()
    assert len(_history.runs(project)) == 0
    assert str(_history.runs(project)) == f"No runs yet in {project / 'runs'}"
    assert repr(_history.runs(project)) == f"RunList(folder={str(project / 'runs')!r}, runs=[])"
    _write(project, "20250101-120000-train", _summary("finished"))
    monkeypatch.chdir(project)
    assert [r.status for r in _history.runs()] == ["finished"]  # no open project: the current directory
    assert [r.status for r in _history.runs(project / "runs")] == ["finished"]  # the runs folder itself
    with pytest.raises(ProjectNotFound, match="No project folder at .*nowhere") as info:
        _history.runs(tmp_path / "nowhere")
    assert info.value.hint == (  # no Colab path off Colab
        "Pass the project folder that holds the runs folder: its name on Drive (colabkit.runs('test')) or "
        "its full path, or `colabkit runs PATH` in a terminal."
    )
    assert info.value.render("cli").endswith("HINT: Pass the project folder that holds the runs folder: its name on "
                                             "Drive (colabkit runs test) or its full path.")  # no colabkit.runs()


def test_cli_lists_runs(tmp_path, capsys):
    project = tmp_path / "proj"
    _write(project, "20250101-120000-train", _summary("failed"))
    assert cli.main(["runs", str(project)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["run", "status"]
    assert lines[1].split()[:2] == ["20250101-120000-train", "failed"]
    assert cli.main(["runs", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err.startswith(f"colabkit runs: No project folder at {tmp_path / 'nowhere'}")


def test_stopped_status_reason_and_runs_started_in_the_same_second(tmp_path):
    project = tmp_path / "proj"
    # same second: the folder names sort the other way round; the child's start time decides
    _write(project, "20250101-120000-zeta", _summary("stopped", reason="budget", pid_create_time=1000.2))
    _write(project, "20250101-120000-alpha", _summary("finished", pid_create_time=1000.7))
    _write(project, "20250101-115959-omega", _summary("failed", pid_create_time=1003.0))  # an earlier second
    listed = _history.runs(project)
    assert [r.name for r in listed] == ["20250101-115959-omega", "20250101-120000-zeta", "20250101-120000-alpha"]
    assert (listed[1].status, listed[1].reason) == ("stopped", "budget")


def test_run_info_and_run_list_reprs(tmp_path):
    project = tmp_path / "proj"
    _write(project, "20250101-120000-train", _summary("finished", peak_gpu_bytes=3 * GIB))
    _write(project, "20250101-130000-<b>", "{broken")
    listed = _history.runs(project)
    folder = project / "runs"
    first = (
        f"RunInfo(name='20250101-120000-train', path={str(folder / '20250101-120000-train')!r}, status='finished', "
        "script='train.py', started='2025-01-01T12:00:00+00:00', ended='2025-01-01T12:41:12+00:00', "
        f"duration_s=2472.0, returncode=0, peak_gpu_bytes={3 * GIB})"
    )
    assert repr(listed[0]) == first
    second = repr(listed[1])
    assert second.startswith("RunInfo(name='20250101-130000-<b>', path=") and "status='unknown', problem='summary.json: " in second
    assert "script=" not in second and "None" not in second  # defaults are left out
    assert repr(listed) == f"RunList(folder={str(folder)!r}, runs=[\n    {first},\n    {second},\n])"
    assert str(listed).splitlines()[0].split()[:2] == ["run", "status"]

    html = listed[1]._repr_html_()
    assert "20250101-130000-&lt;b&gt;" in html and "<b>" not in html
    td = "<td style='text-align:left;vertical-align:top'>"
    assert f"{td}unknown</td>{td}n/a</td>{td}n/a</td>{td}n/a</td>" in html
    assert "<p>summary.json: " in html
    assert listed[0]._repr_html_().count(td) == 6


def test_project_name_is_resolved_on_drive_without_side_effects(tmp_path, monkeypatch):
    here = tmp_path / "elsewhere"
    _write(here / "test", "20250101-110000-train", _summary("failed"))  # ./test: must not be the one read
    monkeypatch.chdir(here)
    assert [r.status for r in _history.runs("test")] == ["failed"]  # no Drive nor stand-in: the current directory

    root = tmp_path / "drive" / "MyDrive"  # the $COLABKIT_DRIVE stand-in of conftest
    _write(root / "test", "20250101-120000-train", _summary("finished"))
    for name in ("test", "MyDrive/test", "My Drive/test"):
        listed = _history.runs(name)
        assert [r.status for r in listed] == ["finished"], name
        assert listed.folder == root / "test" / "runs"
    assert Path.cwd() == here and _project.current_project() is None  # nothing opened, no chdir
    with pytest.raises(ProjectNotFound) as info:
        _history.runs("tset")
    assert info.value.message == f"No project folder at {root / 'tset'}"
    assert info.value.path == str(root / "tset")
    assert [r.status for r in _history.runs(here / "test")] == ["failed"]  # an absolute path is taken as is


def test_shared_drive_names_are_resolved_beside_mydrive_as_project_does(tmp_path, capsys):
    top = tmp_path / "drive"  # the $COLABKIT_DRIVE stand-in of conftest: its mountpoint
    (top / "MyDrive").mkdir(parents=True)
    _write(top / "Shareddrives/Lab/exp", "20250101-120000-train", _summary("finished"))
    # where 0.1 looked: inside MyDrive, not beside it
    _write(top / "MyDrive/Shareddrives/Lab/exp", "20250101-130000-train", _summary("failed"))
    listed = colabkit.runs("Shareddrives/Lab/exp")
    assert listed.folder == top / "Shareddrives/Lab/exp/runs"
    assert [(r.name, r.status) for r in listed] == [("20250101-120000-train", "finished")]
    _write(top / ".shortcut-targets-by-id/1AbC/data", "20250101-140000-train", _summary("interrupted"))
    assert [r.status for r in colabkit.runs(".shortcut-targets-by-id/1AbC/data")] == ["interrupted"]
    assert cli.main(["runs", "Shareddrives/Lab/exp"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["20250101-120000-train", "finished"]
    assert colabkit.project("Shareddrives/Lab/exp").path == listed.folder.parent  # the same folder


@pytest.mark.fuse
def test_dead_drive_mount_raises_mount_error_with_the_fix(tmp_path):
    backing = tmp_path / "backing"
    _write(backing / "proj", "20250101-120000-train", _summary("finished"))
    with bindfs(backing, tmp_path / "mnt") as mnt:
        assert [r.status for r in _history.runs(mnt / "proj")] == ["finished"]
        kill_fuse(mnt)
        with pytest.raises(MountError, match=r"^Drive at .*mnt is dead \(\[Errno 107\] Transport endpoint") as info:
            _history.runs(mnt / "proj")
        err = info.value
        assert err.reason == "dead" and err.mountpoint == str(mnt)
        assert err.message.endswith(f"), so colabkit cannot list the runs ({mnt / 'proj'})")
        assert err.hint.startswith("Remount with colabkit.mount(force=True), then try again.")
        assert err.cli_hint.startswith("Remount with `colabkit mount --force`, then try again.")
        assert isinstance(err, OSError)


_OK = "import time\ntime.sleep(0.3)\nprint('done')\n"
_FAIL = "import sys\nprint('bad input', file=sys.stderr)\nsys.exit(3)\n"


def test_real_runs_are_listed_in_order_with_status_and_duration(tmp_path, monkeypatch):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "train.py").write_text(_OK)
    (project / "broken.py").write_text(_FAIL)
    (project / "train2.py").write_text(_OK)
    monkeypatch.chdir(project)
    before = datetime.now(timezone.utc).replace(microsecond=0)
    results = [
        colabkit.run("train.py", monitor=False),
        colabkit.run("broken.py", monitor=False, check=False),  # same second as the next, most likely
        colabkit.run("train2.py", monitor=False),
    ]
    after = datetime.now(timezone.utc)
    assert [r.status for r in results] == ["finished", "failed", "finished"]

    listed = _history.runs(str(project))
    assert [r.path for r in listed] == [r.log_dir for r in results]
    assert [(r.script, r.status, r.returncode) for r in listed] == [
        ("train.py", "finished", 0), ("broken.py", "failed", 3), ("train2.py", "finished", 0),
    ]
    for info, result in zip(listed, results, strict=True):
        assert info.duration_s == pytest.approx(result.duration_s, abs=0.01)
        assert before <= info.started <= info.ended <= after
        assert info.peak_gpu_bytes is None and info.problem is None
    assert listed[0].duration_s >= 0.3
    assert [r.name for r in _history.runs()] == [r.name for r in listed]  # the current directory by default
    assert cli.main(["runs", str(project)]) == 0


def test_each_end_says_why_with_the_step_from_the_summary(tmp_path, dead):
    project = tmp_path / "proj"
    copy = {"state": "behind", "bytes": 10, "of": 20, "behind": ["output.log"]}
    _write(project, "20250101-120000-train", _summary("finished", last_step=12000, checkpoint_step=12000))
    _write(project, "20250101-130000-train", _summary("stopped", reason="budget", last_step=7150, checkpoint_step=7000))
    _write(project, "20250101-140000-train", _summary("running", boot_id="another-vm", last_step=7100, copy=copy))
    _write(project, "20250101-150000-train", _summary("running", pid=dead[0], pid_create_time=dead[1]))
    (project / "runs/20250101-160000-train").mkdir()
    (project / "runs/20250101-160000-train/summary.json").write_text(json.dumps(_summary("failed")))
    (project / "runs/20250101-160000-train/output.log").write_text(
        "step 1\nTraceback (most recent call last):\nRuntimeError: CUDA error: device-side assert triggered\n"
        "\n[colabkit] run failed after 3s\n"
    )
    listed = _history.runs(project)
    assert [r.ending for r in listed] == [
        "finished at step 12,000",
        "stopped by its budget at step 7,150 (checkpoint at step 7,000); resume=True continues it",
        "lost at step 7,100: VM recycled; run the same cell with resume=True to continue",
        "lost: its processes are gone; run the same cell with resume=True to continue",
        "failed: RuntimeError: CUDA error: device-side assert triggered",
    ]
    assert [r.copy for r in listed] == [None, None, "behind", None, None]
    assert listed[1].row()[-1] == listed[1].ending
