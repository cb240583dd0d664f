"""attach(): a second process follows a live run's output and status from where it is now, detaches on Ctrl-C
leaving the run alone, and returns with the run's ending when it ends. Here a small writer process stands for
the run (its own summary.json, output.log and .live.json); tests/test_disconnect.py attaches to real runs."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import child_env

from colabkit import _attach, _display, _runtime
from colabkit.errors import ColabkitError

RUN = "20260101-120000-train"
WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    folder = sys.argv[1]
    def summary(status):
        import psutil
        me = psutil.Process()
        data = {"status": status, "script": "train.py", "started": "2026-01-01T12:00:00Z", "pid": me.pid,
                "pid_create_time": me.create_time(), "boot_id": sys.argv[2], "log": "output.log"}
        if status != "running":
            data.update(ended="2026-01-01T12:10:00Z", duration_s=600.0, returncode=0)
        tmp = os.path.join(folder, ".s.tmp")
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, os.path.join(folder, "summary.json"))
    summary("running")
    with open(os.path.join(folder, ".live.json"), "w") as f:
        json.dump({"text": "GPU n/a · 1m00s", "at": time.time()}, f)
    log = open(os.path.join(folder, "output.log"), "a")
    print("ready", flush=True)
    n = int(sys.argv[3])
    for command in sys.stdin:
        word, _, count = command.strip().partition(" ")
        if word == "write":
            for _ in range(int(count)):
                log.write(f"line {n}\\n")
                n += 1
            log.flush()
            print("wrote", flush=True)
        elif word == "finish":
            summary("finished")
            print("finished", flush=True)
            break
    """
)


@pytest.fixture
def live_run(tmp_path):
    """A project with one run "in progress": the writer process owns its summary and appends to its log."""
    project = tmp_path / "proj"
    folder = project / "runs" / RUN
    folder.mkdir(parents=True)
    (folder / "output.log").write_text("".join(f"line {i}\n" for i in range(30)))
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder), _runtime.boot_id(), "30"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(),
    )
    try:
        assert writer.stdout.readline() == "ready\n"
        yield project, folder, writer
    finally:
        writer.kill()
        writer.wait()
        writer.stdin.close()
        writer.stdout.close()


def _tell(writer: subprocess.Popen, command: str) -> str:
    writer.stdin.write(command + "\n")
    writer.stdin.flush()
    return writer.stdout.readline()


def _attacher(project: Path, *args: str) -> subprocess.Popen:
    code = "import sys, colabkit._attach as a; r = a.attach(*sys.argv[2:], project=sys.argv[1]); print('RETURNED', r.status)"
    return subprocess.Popen(
        [sys.executable, "-c", code, str(project), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(COLABKIT_DISPLAY="plain"),
    )


def _until(proc: subprocess.Popen, text: str, seen: list[str], deadline_s: float = 30.0) -> None:
    """Read the attacher's output until ``text`` appears (fail at the deadline)."""
    end = time.monotonic() + deadline_s
    buffer = "".join(seen)
    while text not in buffer:
        left = end - time.monotonic()
        assert left > 0, f"{text!r} never came; got {buffer!r}"
        if not select.select([proc.stdout], [], [], left)[0]:
            continue
        chunk = os.read(proc.stdout.fileno(), 65536).decode()
        assert chunk, f"the attacher ended before {text!r}: {buffer!r} {proc.stderr.read().decode()}"
        seen.append(chunk)
        buffer += chunk


def _close(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def test_attach_follows_from_where_the_run_is_and_returns_at_its_end(live_run):
    project, folder, writer = live_run
    attacher = _attacher(project)
    seen: list[str] = []
    try:
        _until(attacher, "line 29\n", seen)  # the last lines first, for context
        assert _tell(writer, "write 5") == "wrote\n"
        _until(attacher, "line 34\n", seen)
        assert _tell(writer, "finish") == "finished\n"
        _until(attacher, "RETURNED finished", seen)
        assert attacher.wait(30) == 0
    finally:
        _close(attacher)
    out = "".join(seen)
    first = out.splitlines()[0]
    assert first.startswith(f"colabkit: attached to {RUN} (train.py, running ")
    assert first.endswith("; Ctrl-C or Stop detaches, the run goes on")
    shown = [line for line in out.splitlines() if line.startswith("line ")]
    assert shown == [f"line {i}" for i in range(10, 35)]  # 20 lines of context, then the new ones once each
    assert f"colabkit: {RUN}: finished" in out
    assert (folder / "output.log").read_text().count("\n") == 35  # attach only read


def test_ctrl_c_detaches_and_leaves_the_run_alone(live_run):
    project, folder, writer = live_run
    attacher = _attacher(project, RUN)
    seen: list[str] = []
    try:
        _until(attacher, "line 29\n", seen)
        attacher.send_signal(signal.SIGINT)
        _until(attacher, "RETURNED running", seen)
        assert attacher.wait(30) == 0
    finally:
        _close(attacher)
    assert f"colabkit: detached from {RUN}; it goes on (`colabkit attach` shows it again)" in "".join(seen)  # not a notebook
    assert writer.poll() is None and psutil.Process(writer.pid).status() != psutil.STATUS_ZOMBIE
    assert _tell(writer, "write 1") == "wrote\n"  # the run goes on as before
    assert json.loads((folder / "summary.json").read_text())["status"] == "running"


def test_attach_shows_the_live_status_line(live_run, capsys, monkeypatch):
    project, folder, writer = live_run
    stop = threading.Event()
    seen: list[str] = []
    original = _display.StatusLine.update

    def update(self, text, now):
        seen.append(text)
        stop.set()  # one status line is enough: detach
        original(self, text, now)

    monkeypatch.setattr(_display.StatusLine, "update", update)
    info = _attach.attach(project=project, stop=stop)
    assert seen == ["GPU n/a · 1m00s"]
    assert info.status == "running"
    assert "detached from" in capsys.readouterr().out


def test_no_running_run_and_unknown_names_say_what_there_is(tmp_path, capsys):
    project = tmp_path / "proj"
    folder = project / "runs" / RUN
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"status": "finished", "script": "train.py", "returncode": 0}))
    with pytest.raises(ColabkitError) as info:
        _attach.attach(project=project)
    assert info.value.message == f"no run is running in {project / 'runs'} (latest: {RUN} (finished))"
    assert "colabkit.runs() lists them" in info.value.hint and "`colabkit runs`" in info.value.render("cli")
    with pytest.raises(ColabkitError, match="no run matches 'nope'"):
        _attach.attach("nope", project=project)
    assert _attach.attach("20260101", project=project).status == "finished"  # a finished run: its ending, no follow
    assert capsys.readouterr().out == f"colabkit: {RUN} is not running: finished\n"


def test_follower_reads_only_what_is_new(tmp_path):
    log = tmp_path / "output.log"
    log.write_bytes(b"a\nb\r\nprogress 1\rprogress 2\nc\n")
    follower = _attach.Follower(log, lines=2)
    assert follower.backlog() == "progress 2\nc\n"
    assert follower.read() == ""
    with open(log, "ab") as f:
        f.write("d é".encode()[:-1])  # half a character
    assert follower.read() == "d "
    with open(log, "ab") as f:
        f.write("é".encode()[-1:] + b"\n")
    assert follower.read() == "é\n"


def test_live_status_is_rewritten_at_most_once_a_second(tmp_path):
    tmp_path = tmp_path / "run"
    tmp_path.mkdir()
    live = _attach.LiveStatus(tmp_path)
    live.update("one", 10.0)
    live.update("two", 10.5)
    assert _attach.read_live(tmp_path)["text"] == "one"
    live.update("three", 11.0, step=7100)
    assert (_attach.read_live(tmp_path)["text"], _attach.read_live(tmp_path)["step"]) == ("three", 7100)
    assert [p.name for p in tmp_path.iterdir()] == [".live.json"]
    live.close()
    assert _attach.read_live(tmp_path) is None


def test_a_run_writing_on_this_machine_is_found_while_its_drive_folder_cannot_be_read(tmp_path, capsys):
    """Drive died under a local-first run (and could not be remounted): its folder on Drive shows nothing, or
    cannot be read at all; the run, writing on this machine's disk, is still the one attach() follows."""
    from colabkit import _mirror

    project = tmp_path / "proj"
    (project / "runs").mkdir(parents=True)  # the Drive side: empty, as a bare mountpoint shows it
    remote = project / "runs" / RUN
    local = _mirror.local_dir(remote)
    local.mkdir(parents=True)
    (local / _mirror.MARKER).write_text(json.dumps({"remote": str(remote), "created": time.time()}))
    (local / "output.log").write_text("".join(f"line {i}\n" for i in range(30)))
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(local), _runtime.boot_id(), "30"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(),
    )
    try:
        assert writer.stdout.readline() == "ready\n"
        stop = threading.Event()
        stop.set()  # detach at once: only which run it picked matters here
        info = _attach.attach(project=project, stop=stop)
        assert (info.name, info.path, info.status) == (RUN, remote, "running")
        assert _attach.follow_dir(info) == local
        assert "line 29" in capsys.readouterr().out
    finally:
        writer.kill()
        writer.wait()
        writer.stdin.close()
        writer.stdout.close()
