"""What a notebook user relies on, checked in a real Jupyter kernel driven through jupyter_client.

Stop (SIGINT to the kernel, as Colab's Stop button sends it) during ``run()`` ends the whole run and
leaves the kernel usable; on a simulated Colab VM ``setup()`` mounts the fake Drive once, runs write
to Drive and ``release()`` flushes and gives the VM back; a flood of output reaches the screen
throttled while ``output.log`` keeps all of it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import FAKES, ROOT
from fakes.colabvm import mount_table, unmount_under

pytest.importorskip("ipykernel")
jupyter_manager = pytest.importorskip("jupyter_client.manager")

pytestmark = [pytest.mark.notebook, pytest.mark.timeout(90)]

START_TIMEOUT_S = 60  # a cold kernel on a busy 2-core machine
CELL_TIMEOUT_S = 40


@dataclass
class Cell:
    """What one execute request produced: its iopub messages (in order) and its shell reply."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    reply: dict[str, Any] = field(default_factory=dict)

    @property
    def stdout(self) -> str:
        return "".join(
            m["content"]["text"]
            for m in self.messages
            if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
        )

    @property
    def streams(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] == "stream"]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [m["content"] for m in self.messages if m["msg_type"] == "error"]

    def result(self) -> str | None:
        for m in self.messages:
            if m["msg_type"] == "execute_result":
                return m["content"]["data"]["text/plain"]
        return None

    def check(self) -> Cell:
        assert self.reply.get("status") == "ok" and not self.errors, (self.errors, self.stdout[-2000:])
        return self


class Kernel:
    """A real ipykernel (``python3`` kernel spec) with its own environment and working folder."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self._down = False
        self.km = jupyter_manager.KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, cwd=str(cwd))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=START_TIMEOUT_S)
        self.pid: int = self.km.provisioner.process.pid

    def execute(
        self,
        code: str,
        *,
        timeout: float = CELL_TIMEOUT_S,
        on_message: Callable[[dict[str, Any]], None] | None = None,
    ) -> Cell:
        """Run one cell and collect what it sent until the kernel went idle; ``on_message`` sees each message live."""
        msg_id = self.kc.execute(textwrap.dedent(code))
        cell = Cell()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"the cell did not finish in {timeout:g} s; output so far:\n{cell.stdout[-2000:]}"
                )
            try:
                msg = self.kc.get_iopub_msg(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            cell.messages.append(msg)
            if on_message is not None:
                on_message(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        while True:
            reply = self.kc.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                cell.reply = reply["content"]
                return cell

    def descendants(self) -> list[psutil.Process]:
        """The kernel's live (not zombie) descendants."""
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []
        return [p for p in kids if _running(p.pid)]

    def shutdown(self) -> None:
        """Stop the kernel and whatever it started, even mid-run (a second call does nothing)."""
        if self._down:
            return
        self._down = True
        leftovers = self.descendants()
        try:
            self.kc.stop_channels()
        finally:
            self.km.shutdown_kernel(now=True)
            for p in leftovers:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(leftovers, timeout=5)


@pytest.fixture
def kernel(tmp_path) -> Iterator[Callable[..., Kernel]]:
    """Start kernels with this test's environment (plus the checkout on PYTHONPATH); all shut down after."""
    started: list[Kernel] = []

    def start(cwd: Path | None = None, pythonpath: tuple[Path, ...] = ()) -> Kernel:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [*(str(p) for p in pythonpath), str(ROOT), env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
        env.pop("COLABKIT_DISPLAY", None)  # the kernel must find out by itself that it is a notebook
        env["MPLBACKEND"] = "Agg"
        k = Kernel(env, cwd or tmp_path)
        started.append(k)
        return k

    try:
        yield start
    finally:
        for k in reversed(started):
            k.shutdown()


@pytest.fixture
def pid_files() -> Iterator[list[Path]]:
    """JSON files of pids a test's script writes; those processes are killed after the test, whatever happened.

    A grandchild that left the run's process group is no descendant of the kernel once its parent died,
    so shutting the kernel down does not reach it.
    """
    files: list[Path] = []
    yield files
    for path in files:
        try:
            pids = json.loads(path.read_text()).values()
        except (OSError, ValueError):
            continue
        for pid in pids:
            try:
                p = psutil.Process(pid)
                if any("300" in arg for arg in p.cmdline()):
                    p.kill()
            except psutil.Error:
                pass


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _group(pgid: int) -> list[int]:
    pids = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and _running(p.pid):
                pids.append(p.pid)
        except OSError:
            continue
    return pids


def _only_run_dir(project: Path, stem: str) -> Path:
    (run_dir,) = (d for d in (project / "runs").iterdir() if d.name.endswith(f"-{stem}"))
    return run_dir


# -- 1. Stop during run() ----------------------------------------------------------------------------

TRAIN = """\
import os, subprocess, sys, time
group = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
alone = subprocess.Popen(["sleep", "300"], start_new_session=True)  # left the run's process group
with open("pids.json.tmp", "w") as f:
    f.write('{"group": %d, "alone": %d}' % (group.pid, alone.pid))
os.replace("pids.json.tmp", "pids.json")
n = 0
while True:
    # one write per line: print() writes its text and its newline apart (stdout is unbuffered), and a Stop
    # between them would leave "step N" without its end in output.log, a race of this script, not of colabkit
    sys.stdout.write(f"step {n}\\n")
    sys.stdout.flush()
    n += 1
    time.sleep(0.02)
"""


def test_stop_during_run_ends_every_process_and_keeps_the_kernel(tmp_path, kernel, pid_files):
    project = tmp_path / "drive" / "MyDrive" / "proj"
    project.mkdir(parents=True)
    pid_files.append(project / "pids.json")
    (project / "train.py").write_text(TRAIN)
    (project / "quick.py").write_text("print('quick done')\n")
    k = kernel()
    opened = k.execute(
        "import colabkit; colabkit.setup('proj', gpu='prefer'); import os; print('CWD', os.getcwd())"
    ).check()
    assert f"CWD {project}\n" in opened.stdout

    interrupted: list[float] = []
    screen_before_stop: list[str] = []

    def stop_once_training(msg: dict[str, Any]) -> None:
        if interrupted or msg["msg_type"] != "stream":
            return
        screen_before_stop.append(msg["content"]["text"])
        if "step " in msg["content"]["text"] and (project / "pids.json").exists():
            interrupted.append(time.monotonic())
            k.km.interrupt_kernel()  # what Colab's Stop button does: SIGINT to the kernel

    cell = k.execute("r = colabkit.run('train.py')", on_message=stop_once_training)
    assert interrupted, f"the child never showed training output: {cell.stdout[-2000:]} {cell.errors}"
    took = time.monotonic() - interrupted[0]
    assert cell.reply["status"] == "error" and cell.reply["ename"] == "KeyboardInterrupt", cell.reply
    assert [e["ename"] for e in cell.errors] == ["KeyboardInterrupt"]
    assert took < 8, f"Stop took {took:.1f} s to end a run whose processes all die on SIGINT"
    assert "colabkit: interrupted; stopping the run (press Stop again to kill it at once)\n" in cell.stdout

    run_dir = _only_run_dir(project, "train")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["reason"]) == ("interrupted", "interrupt")
    pids = json.loads((project / "pids.json").read_text())
    assert not _group(summary["pid"]), f"processes of the run's group survive Stop: {_group(summary['pid'])}"
    survivors = [name for name, pid in pids.items() if _running(pid)]
    assert not survivors, f"grandchildren survive Stop: {survivors} of {pids}"
    assert not k.descendants(), [p.cmdline() for p in k.descendants()]

    log_lines = (run_dir / "output.log").read_text().splitlines()
    shown = re.findall(r"step \d+", "".join(screen_before_stop))
    assert shown and set(shown) <= set(log_lines), "lines shown before Stop are missing from output.log"
    steps = [line for line in log_lines if line.startswith("step ")]
    assert steps == [f"step {i}" for i in range(len(steps))], "output.log lost or reordered lines"
    assert log_lines[-1].startswith("[colabkit] run interrupted (interrupt)"), log_lines[-3:]

    assert k.km.is_alive()
    assert k.execute("1 + 1").check().result() == "2"
    threads = k.execute(
        "import threading; [t.name for t in threading.enumerate() if t.name.startswith('colabkit') and t.is_alive()]"
    ).check()
    assert threads.result() == "[]"

    again = k.execute("r2 = colabkit.run('quick.py'); print('STATUS', r2.status, r2.returncode)").check()
    assert "quick done" in again.stdout and "STATUS finished 0" in again.stdout
    assert (_only_run_dir(project, "quick") / "output.log").read_text() == "quick done\n"
    assert not k.descendants()


# -- 2. a simulated Colab VM ---------------------------------------------------------------------------


@pytest.mark.fuse
def test_colab_setup_mounts_once_runs_on_drive_and_release_gives_the_vm_back(vm, kernel):
    (vm.sysroot / "proc").mkdir()
    (vm.sysroot / "proc/uptime").write_text("3600.00 7000.00\n")
    project_backing = vm.mydrive / "test"
    project_backing.mkdir()
    (project_backing / "test.py").write_text("print('hello from test.py')\n")
    k = kernel(pythonpath=(FAKES,))
    try:
        first = k.execute(
            f"""
            import os, colabkit, google.colab
            s = colabkit.setup("test", gpu="prefer")
            print("KIND", s.runtime.kind, "FAKE", google.colab.__file__.startswith({str(FAKES)!r}))
            print("CWD", os.getcwd())
            """
        ).check()
        assert "KIND colab FAKE True" in first.stdout
        assert mount_table().get(str(vm.mountpoint)) == "fuse.drive"
        assert f"CWD {vm.mountpoint / 'MyDrive' / 'test'}\n" in first.stdout
        assert [c for c in vm.calls() if c.startswith("drive.mount ")] == [
            f"drive.mount {vm.mountpoint} force_remount=False timeout_ms=120000"
        ]

        ran = k.execute("r = colabkit.run('test.py'); print('STATUS', r.status, r.log_dir)").check()
        assert "hello from test.py" in ran.stdout
        assert "colabkit: VM up 1h00m of ~12h00m" in ran.stdout
        run_dir = _only_run_dir(project_backing, "test")  # written through the mount to the "remote" Drive
        assert f"STATUS finished {vm.mountpoint / 'MyDrive' / 'test' / 'runs' / run_dir.name}" in ran.stdout
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
        assert (run_dir / "output.log").read_text() == "hello from test.py\n"

        k.execute('colabkit.setup("test", gpu="prefer")').check()
        assert len([c for c in vm.calls() if c.startswith("drive.mount ")]) == 1, vm.calls()

        k.execute("colabkit.release()").check()
        calls = vm.calls()
        assert calls[-2:] == ["drive.flush_and_unmount timeout_ms=86400000", "runtime.unassign"], calls
        assert vm.unassigned
        assert str(vm.mountpoint) not in mount_table()
        assert (run_dir / "output.log").exists()
    finally:
        k.shutdown()  # the kernel's cwd is on the mount
        unmount_under(vm.sysroot)


# -- 3. output flood -----------------------------------------------------------------------------------

FLOOD = """\
for i in range(100_000):
    print(f"line {i}")
"""

BAR = """\
import sys, time
from tqdm import tqdm
for _ in tqdm(range(3000), file=sys.stderr, mininterval=0, miniters=1, ascii=True):
    time.sleep(0.0005)
print("bar done")
"""


def test_a_flood_reaches_the_screen_throttled_and_the_log_in_full(tmp_path, kernel):
    project = tmp_path / "drive" / "MyDrive" / "proj"
    project.mkdir(parents=True)
    (project / "flood.py").write_text(FLOOD)
    (project / "bar.py").write_text(BAR)
    k = kernel()
    k.execute("import colabkit; colabkit.setup('proj', gpu='prefer')").check()

    cell = k.execute("r = colabkit.run('flood.py', monitor=False); print('STATUS', r.status)").check()
    assert "STATUS finished" in cell.stdout
    screen = "".join(m["content"]["text"] for m in cell.streams)
    shown = screen.count("\n")
    assert shown < 5000, f"the kernel sent {shown} lines to the screen for 100,000 printed"
    assert len(cell.streams) < 1000, f"{len(cell.streams)} stream messages"
    assert re.search(r"\.\.\. \d+ lines not shown, see output\.log", screen)
    assert "line 99999" in screen  # the end is on screen
    log = (_only_run_dir(project, "flood") / "output.log").read_text().splitlines()
    assert log == [f"line {i}" for i in range(100_000)]

    bar = k.execute("r = colabkit.run('bar.py', monitor=False); print('STATUS', r.status)").check()
    assert "STATUS finished" in bar.stdout
    # the bar, redrawn with \r, is an output updated in place: the cell (and a saved notebook) shows it once
    area = [
        line
        for kind, data in _output_area(bar.messages)
        for line in (_stream_lines(data) if kind == "stream" else data.get("text/plain", "").split("\n"))
    ]
    bars = [line for line in area if "/3000" in line]
    assert len(bars) == 1 and "3000/3000" in bars[0], bars
    assert area.index(bars[0]) < area.index("bar done")
    redraws = [m for m in bar.messages if m["msg_type"] in ("stream", "display_data", "update_display_data")]
    assert len(redraws) < 100, f"the bar was redrawn {len(redraws)} times on screen"
    updates = len(bar.messages)
    assert updates < 300, f"{updates} iopub messages for one progress bar"
    logged = (_only_run_dir(project, "bar") / "output.log").read_text()
    assert len(re.findall(r"\d+/3000", logged)) > 1000  # output.log keeps every update


# -- 4. the kernel restarts mid-run --------------------------------------------------------------------------

CHATTY = """\
import json, os, subprocess, sys, time
group = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
alone = subprocess.Popen(["sleep", "300"], start_new_session=True)
with open("pids.json.tmp", "w") as f:
    json.dump({"script": os.getpid(), "group": group.pid, "alone": alone.pid}, f)
os.replace("pids.json.tmp", "pids.json")
n = 0
try:
    while True:
        print(f"step {n}", flush=True)
        n += 1
        time.sleep(0.02)
except KeyboardInterrupt:
    print("saved on KeyboardInterrupt", flush=True)
"""


def test_a_kernel_restarted_mid_run_leaves_no_process_of_the_run(tmp_path, kernel, pid_files):
    """Promise: when the kernel that called run() is restarted (killed) while the script prints constantly,
    the script, its helpers (in its group and in a session of its own) and the run's supervisor are gone
    within 2 s; the script's KeyboardInterrupt save ran (no broken pipe first) and output.log has it."""
    import threading

    project = tmp_path / "drive" / "MyDrive" / "proj"
    project.mkdir(parents=True)
    pid_files.append(project / "pids.json")
    (project / "chatty.py").write_text(CHATTY)
    k = kernel()
    k.execute("import colabkit; colabkit.setup('proj', gpu='prefer')").check()
    msg_id = k.kc.execute("r = colabkit.run('chatty.py')")
    deadline = time.monotonic() + CELL_TIMEOUT_S
    while not (project / "pids.json").exists() or not list((project / "runs").glob("*/output.log")):
        assert time.monotonic() < deadline, "the script did not start"
        time.sleep(0.05)
    run_dir = _only_run_dir(project, "chatty")
    while (run_dir / "output.log").read_bytes().count(b"step ") < 20:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pids = json.loads((project / "pids.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    pids["supervisor"] = summary["supervisor_pid"]
    assert all(_running(p) for p in pids.values())
    old_kernel = k.pid
    seen: dict[str, float] = {}

    def watch() -> None:  # plain polling on its own thread: the restart below blocks the test's thread
        end = time.monotonic() + START_TIMEOUT_S
        while _running(old_kernel) and time.monotonic() < end:
            time.sleep(0.005)
        seen["died"] = time.monotonic()
        while any(_running(p) for p in pids.values()) and time.monotonic() < end:
            time.sleep(0.005)
        seen["gone"] = time.monotonic()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        k.km.restart_kernel(now=True)  # what Runtime → Restart session does: the kernel is killed, a new one starts
    finally:
        watcher.join(START_TIMEOUT_S + 5)
    assert not [name for name, p in pids.items() if _running(p)]
    took = seen["gone"] - seen["died"]
    assert took < 2.0, f"the run's processes outlived the kernel by {took:.2f} s"
    assert msg_id
    log = (run_dir / "output.log").read_text()
    assert "saved on KeyboardInterrupt" in log and "BrokenPipeError" not in log
    assert "[colabkit] the process that started the run (pid " in log
    from colabkit._summary import RunSummary

    ended = RunSummary.read(run_dir)
    # jupyter_client interrupts the kernel just before it kills it: whether run() began the stop sequence in
    # that moment (reason "interrupt") or the supervisor did (reason "launcher") is a race; the ending is not
    assert (ended.status, ended.returncode, ended.ended is not None) == ("interrupted", 0, True)
    k.kc.wait_for_ready(timeout=START_TIMEOUT_S)
    k.pid = k.km.provisioner.process.pid
    assert k.execute("1 + 1").check().result() == "2"  # the new kernel works


# -- 5. nested progress bars in a notebook -------------------------------------------------------------------

NESTED = """\
import sys, time
from tqdm import tqdm
print("starting", flush=True)
for epoch in tqdm(range(3), desc="epoch", position=0, ncols=60, ascii=True, mininterval=0):
    for _ in tqdm(range(30), desc="batch", position=1, leave=False, ncols=60, ascii=True, mininterval=0):
        time.sleep(0.01)
    tqdm.write(f"epoch {epoch} done")
print("training done")
"""


def _output_area(messages: list[dict[str, Any]]) -> list[list[Any]]:
    """The cell's outputs as Jupyter keeps them: consecutive stream texts merged, displays updated by id."""
    outputs: list[list[Any]] = []
    by_id: dict[str, list[Any]] = {}
    for m in messages:
        kind, content = m["msg_type"], m["content"]
        if kind == "stream":
            if outputs and outputs[-1][0] == "stream":
                outputs[-1][1] += content["text"]
            else:
                outputs.append(["stream", content["text"]])
        elif kind == "display_data":
            slot = ["display", content["data"]]
            outputs.append(slot)
            display_id = content.get("transient", {}).get("display_id")
            if display_id:
                by_id[display_id] = slot
        elif kind == "update_display_data":
            by_id[content["transient"]["display_id"]][1] = content["data"]
    return outputs


def _stream_lines(text: str) -> list[str]:
    """Jupyter's stream rendering: after \\r the line is written over from its start; no other control."""
    out = []
    for line in text.split("\n"):
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part) :]
        out.append(shown.rstrip())
    return [line for line in out if line]


def test_nested_tqdm_bars_stay_in_place_in_a_real_notebook(tmp_path, kernel):
    """Promise: real nested tqdm bars (``position=``, redrawn with cursor-up escapes, which a notebook cannot
    do) stay in place in a notebook: one output updated in place, lines in their order, no bar drawn again
    below the last, and the cell ends showing what a terminal would."""
    project = tmp_path / "drive" / "MyDrive" / "proj"
    project.mkdir(parents=True)
    (project / "nested.py").write_text(NESTED)
    k = kernel()
    k.execute("import colabkit; colabkit.setup('proj', gpu='prefer')").check()
    cell = k.execute("r = colabkit.run('nested.py', monitor=False); print('STATUS', r.status)").check()
    assert all("\x1b[A" not in m["content"]["text"] for m in cell.streams), "cursor-up reached the notebook"
    outputs = _output_area(cell.messages)
    panes = [o for o in outputs if o[0] == "display" and "text/html" not in o[1]]
    assert len(panes) == 1, outputs
    updates = [m for m in cell.messages if m["msg_type"] == "update_display_data"]
    assert len(updates) >= 3  # redrawn in place as the bars moved
    shown: list[str] = []
    for kind, body in outputs:
        if kind == "stream":
            shown += _stream_lines(body)
        elif "text/html" not in body:  # the status line has its own output
            shown += [line.rstrip() for line in body["text/plain"].split("\n") if line.strip()]
    run_area = shown[shown.index("starting") : shown.index("training done") + 1]
    assert run_area[:4] == ["starting", "epoch 0 done", "epoch 1 done", "epoch 2 done"]
    assert re.fullmatch(r"epoch: 100%\|#+\| 3/3 \[.*\]", run_area[4]), run_area
    assert run_area[5:] == ["training done"]
    assert "STATUS finished" in cell.stdout
