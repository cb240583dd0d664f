"""Checkpoints: atomic save, pruning, latest(), a save killed midway, and resuming a real training child."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT, child_env, child_process

from colabkit import _checkpoint, _files
from colabkit.errors import CheckpointError

EXAMPLE = ROOT / "examples" / "resumable_train.py"


def test_save_latest_load_round_trip(tmp_path):
    assert _checkpoint.latest(tmp_path / "ckpt") is None
    first = _checkpoint.save({"step": 1}, tmp_path / "ckpt")
    second = _checkpoint.save({"step": 2}, tmp_path / "ckpt")
    assert (first.name, second.name) == ("ckpt-000001.pkl", "ckpt-000002.pkl")
    assert _checkpoint.latest(tmp_path / "ckpt") == second
    assert _checkpoint.load(second) == {"step": 2}
    assert _checkpoint.load(tmp_path / "ckpt") == {"step": 2}  # a folder means its latest


def test_keep_prunes_oldest_and_none_keeps_all(tmp_path):
    folder = tmp_path / "ckpt"
    paths = [_checkpoint.save({"step": i}, folder, keep=3) for i in range(5)]
    assert _visible(folder) == [p.name for p in paths[2:]]
    assert _checkpoint.load(_checkpoint.latest(folder)) == {"step": 4}
    for i in range(3):
        _checkpoint.save({"more": i}, folder, keep=None)
    assert len(_visible(folder)) == 6


def _visible(folder: Path) -> list[str]:
    """The folder's files, without save()'s own list and lock (hidden files)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in (_checkpoint.MANIFEST, _checkpoint.LOCK))


def test_named_checkpoint_and_bad_arguments(tmp_path):
    best = _checkpoint.save({"acc": 0.9}, tmp_path, name="best")
    assert best == tmp_path / "best.pkl"
    assert _checkpoint.save({"acc": 0.95}, tmp_path, name="best") == best  # replaced atomically
    assert _checkpoint.load(best) == {"acc": 0.95}
    with pytest.raises(ValueError, match="keep must be at least 1"):
        _checkpoint.save({}, tmp_path, keep=0)
    with pytest.raises(ValueError, match="plain file stem"):
        _checkpoint.save({}, tmp_path, name="../escape")


def test_latest_ignores_temp_and_foreign_files(tmp_path):
    good = _checkpoint.save({"step": 1}, tmp_path)
    (tmp_path / ".ckpt-000002.pkl.tmp-999999-abcd").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert _checkpoint.latest(tmp_path) == good


def test_unpicklable_object_raises_and_leaves_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="Could not save checkpoint") as info:
        _checkpoint.save({"fn": lambda: 1}, tmp_path / "ckpt")
    assert "state_dict()" in info.value.hint
    assert info.value.path == str(tmp_path / "ckpt" / "ckpt-000001.pkl")
    assert _visible(tmp_path / "ckpt") == []
    assert _checkpoint.save({"step": 1}, tmp_path / "ckpt").name == "ckpt-000001.pkl"  # the number is free again


def test_load_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint in") as info:
        _checkpoint.load(tmp_path)
    assert "colabkit.save(obj, folder)" in info.value.hint
    with pytest.raises(CheckpointError, match="does not exist"):
        _checkpoint.load(tmp_path / "ckpt-000009.pkl")
    broken = tmp_path / "ckpt-000001.pkl"
    broken.write_bytes(b"\x80\x05truncated")
    with pytest.raises(CheckpointError, match="Could not read checkpoint") as info:
        _checkpoint.load(broken)
    assert info.value.path == str(broken)


def test_a_file_where_the_folder_should_be_raises_checkpoint_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="Cannot write checkpoints to") as info:
        _checkpoint.save({}, blocker / "sub")
    assert info.value.message.endswith(f": {blocker} is a file, not a folder")
    assert info.value.hint == f"Save into a folder: pass a path that does not run through the file {blocker}."


_KILLED_SAVE = textwrap.dedent(
    """
    import sys, time
    from colabkit import _checkpoint

    class Stall:
        # pickled after the big blob: announces that the save is under way, then never returns
        def __reduce__(self):
            print("writing", flush=True)
            sys.stdin.read()
            return (int, ())

    folder = sys.argv[1]
    _checkpoint.save({"step": 1}, folder)
    _checkpoint.save({"step": 2, "blob": b"x" * (16 << 20), "stall": Stall()}, folder)
    """
)


def test_save_killed_midway_keeps_previous_checkpoint(tmp_path):
    script = tmp_path / "killed_save.py"
    script.write_text(_KILLED_SAVE)
    folder = tmp_path / "ckpt"
    with child_process([sys.executable, str(script), str(folder)], env=child_env()) as child:
        assert child.stdout.readline().strip() == "writing"
        temps = [p for p in folder.iterdir() if p.name.startswith(".") and ".tmp-" in p.name]
        assert len(temps) == 1 and temps[0].stat().st_size > 16 << 20  # the big blob is on disk
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    good = _checkpoint.latest(folder)
    assert good == folder / "ckpt-000001.pkl"
    assert _checkpoint.load(good) == {"step": 1}
    # the next save sweeps the dead writer's temp file away
    assert _checkpoint.save({"step": 2}, folder) == folder / "ckpt-000002.pkl"
    assert _visible(folder) == ["ckpt-000001.pkl", "ckpt-000002.pkl"]


def _start_example(tmp_path: Path, *args: str, resume: Path | None = None) -> subprocess.Popen[str]:
    extra = {"COLABKIT_RESUME": str(resume)} if resume else {}
    return subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--ckpt-dir", str(tmp_path / "ckpt"), *args],
        stdout=subprocess.PIPE, text=True, env=child_env(**extra),
    )


def test_resume_round_trip_counts_steps_across_two_runs(tmp_path):
    first = _start_example(tmp_path, "--steps", "12", "--step-time", "0.01")
    try:
        for line in first.stdout:
            if line.startswith("step 5 saved"):
                first.send_signal(signal.SIGKILL)  # the VM vanished
                break
        assert first.wait(timeout=10) == -signal.SIGKILL
    finally:
        first.kill()
        first.wait()
        first.stdout.close()
    resume = _checkpoint.latest(tmp_path / "ckpt")
    assert resume is not None
    reached = _checkpoint.load(resume)["step"]
    assert reached >= 5

    second = _start_example(tmp_path, "--steps", "12", "--step-time", "0.01", resume=resume)
    out, _ = second.communicate(timeout=30)
    assert second.returncode == 0
    lines = out.splitlines()
    assert lines[0] == f"resumed from {resume} at step {reached}"
    assert lines[1] == f"training from step {reached} to 12"
    assert lines[2].startswith(f"step {reached + 1} saved")
    assert lines[-1] == "done: 12 steps"
    final = _checkpoint.load(_checkpoint.latest(tmp_path / "ckpt"))
    assert final["step"] == 12
    assert final["loss_history"] == [1.0 / s for s in range(1, 13)]  # no step lost or repeated


def test_sigterm_saves_before_exit_and_resume_continues(tmp_path):
    child = _start_example(tmp_path, "--steps", "1000", "--save-every", "100", "--step-time", "0.02")
    try:
        assert child.stdout.readline() == "training from step 0 to 1000\n"  # handler installed
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=30)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0
    saved = _checkpoint.latest(tmp_path / "ckpt")
    assert saved is not None
    step = _checkpoint.load(saved)["step"]
    assert 1 <= step < 100  # saved because of the signal, not the schedule
    assert out.splitlines()[-1] == f"stopped by SIGTERM at step {step}; resume from {saved}"


def test_foreign_files_are_never_pruned_nor_returned(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "pretrained_resnet50.pt").write_bytes(b"user weights")
    (folder / "vocab.pkl").write_bytes(b"user vocab")
    (folder / "ckpt-final.pkl").write_bytes(b"user file named like ours")
    assert _checkpoint.latest(folder) is None
    paths = [_checkpoint.save({"step": i}, folder, keep=2) for i in range(5)]
    (folder / "notes.pkl").write_bytes(b"written after the last save")
    assert _checkpoint.latest(folder) == paths[-1]
    assert _visible(folder) == [
        "ckpt-000004.pkl", "ckpt-000005.pkl", "ckpt-final.pkl", "notes.pkl", "pretrained_resnet50.pt", "vocab.pkl",
    ]
    assert (folder / "pretrained_resnet50.pt").read_bytes() == b"user weights"
    assert _checkpoint.load(folder) == {"step": 4}


def test_named_checkpoints_are_recorded_never_pruned_and_count_for_latest(tmp_path):
    folder = tmp_path / "ckpt"
    best = _checkpoint.save({"acc": 0.9}, folder, name="best")
    assert _checkpoint.latest(folder) == best
    manifest = json.loads((folder / _checkpoint.MANIFEST).read_text())
    assert manifest == {"schema": 2, "named": {"best": "best.pkl"}, "numbered": []}
    for i in range(4):
        newest = _checkpoint.save({"step": i}, folder, keep=1)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["best.pkl", "ckpt-000004.pkl"]
    assert _checkpoint.latest(folder) == newest
    os.utime(best, ns=(time.time_ns() + 10**9,) * 2)  # saved again later (by mtime)
    assert _checkpoint.latest(folder) == best
    (folder / _checkpoint.MANIFEST).write_text("{broken")  # unreadable: named files no longer count, none deleted
    assert _checkpoint.latest(folder) == newest
    _checkpoint.save({"step": 9}, folder, keep=1)
    assert best.exists()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=10)
    return child.pid


def test_temp_files_of_this_machine_go_when_their_writer_is_dead(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    me = _files.machine_tag()
    dead = folder / f".ckpt-000001.pkl.tmp-{me}-{_dead_pid()}-0123abcd"
    live = folder / f".ckpt-000002.pkl.tmp-{me}-{os.getppid()}-0123abcd"  # a writer still running here
    for p in (dead, live):
        p.write_bytes(b"half")
    _checkpoint.save({"step": 1}, folder)
    assert not dead.exists()
    assert live.exists()
    assert _checkpoint.latest(folder) == folder / "ckpt-000001.pkl"


def test_temp_files_of_another_machine_go_only_after_a_day(tmp_path):
    """A Drive folder shared by two VMs: the other VM's pid means nothing here."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    pid = _dead_pid()  # dead here; the other VM's writer may be alive
    fresh = folder / f".ckpt-000001.pkl.tmp-othervm_0badf00d-{pid}-0123abcd"
    stale = folder / f".ckpt-000002.pkl.tmp-othervm_0badf00d-{pid}-4567abcd"
    legacy_fresh = folder / f".best.pkl.tmp-{pid}-89abcdef"  # written before temp names held the machine
    legacy_stale = folder / f".last.pkl.tmp-{pid}-89abcdef"
    for p in (fresh, stale, legacy_fresh, legacy_stale):
        p.write_bytes(b"half")
    day_ago = time.time() - _files.FOREIGN_TEMP_AGE_S - 60
    for p in (stale, legacy_stale):
        os.utime(p, (day_ago, day_ago))
    _checkpoint.save({"step": 1}, folder)
    assert fresh.exists() and legacy_fresh.exists()
    assert not stale.exists() and not legacy_stale.exists()


def test_temp_names_say_which_machine_wrote_them(tmp_path, monkeypatch):
    tag = _files.machine_tag()
    assert "-" not in tag and tag.startswith(re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40])
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(Path(a).name), real_replace(a, b)))
    _checkpoint.save({"step": 1}, tmp_path)
    m = _files.TEMP.match(seen[0])
    assert m and (m.group("final"), m.group("machine"), int(m.group("pid"))) == ("ckpt-000001.pkl", tag, os.getpid())


_SAVER = textwrap.dedent(
    """
    import os, sys
    from colabkit import _checkpoint

    folder, n, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    while not os.path.exists(go):  # both start saving at the same moment
        pass
    for i in range(n):
        _checkpoint.save({"pid": os.getpid(), "i": i}, folder, keep=None)
    """
)


@pytest.mark.parametrize("where", ["local", pytest.param("fuse", marks=pytest.mark.fuse)])
def test_two_processes_saving_into_one_folder_lose_nothing(tmp_path, where):
    from fakes.colabvm import bindfs

    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    go = tmp_path / "go"
    backing = tmp_path / "backing"
    backing.mkdir()
    n = 150
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(bindfs(backing, tmp_path / "mnt")) if where == "fuse" else backing
        folder = root / "ckpt"
        savers = [
            subprocess.Popen([sys.executable, str(script), str(folder), str(n), str(go)], env=child_env())
            for _ in range(2)
        ]
        try:
            go.write_text("go")
            assert [s.wait(timeout=120) for s in savers] == [0, 0]
        finally:
            for s in savers:
                s.kill()
                s.wait()
        saved = {(obj["pid"], obj["i"]) for obj in (_checkpoint.load(p) for p in sorted(folder.glob("ckpt-*.pkl")))}
        manifest = json.loads((folder / _checkpoint.MANIFEST).read_text())
    assert saved == {(s.pid, i) for s in savers for i in range(n)}  # all 300, none overwritten
    assert len(manifest["numbered"]) == 2 * n and len(set(manifest["numbered"])) == 2 * n


def test_your_own_files_named_like_checkpoints_are_never_pruned(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "ckpt-001000.pt").write_bytes(b"the user's own weights")
    (folder / "ckpt-000002.pkl").write_bytes(b"the user's own pickle")
    paths = [_checkpoint.save({"step": i}, folder, keep=2) for i in range(4)]
    assert [p.name for p in paths] == ["ckpt-001001.pkl", "ckpt-001002.pkl", "ckpt-001003.pkl", "ckpt-001004.pkl"]
    assert (folder / "ckpt-001000.pt").read_bytes() == b"the user's own weights"
    assert (folder / "ckpt-000002.pkl").read_bytes() == b"the user's own pickle"
    assert _visible(folder) == ["ckpt-000002.pkl", "ckpt-001000.pt", "ckpt-001003.pkl", "ckpt-001004.pkl"]
    os.utime(folder / "ckpt-001000.pt", ns=(time.time_ns() + 10**9,) * 2)  # newer, but not ours
    assert _checkpoint.latest(folder) == paths[-1]


def test_a_folder_of_an_older_colabkit_still_resumes_but_is_never_pruned(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    old = folder / "ckpt-000007.pkl"
    old.write_bytes(pickle.dumps({"step": 7}))
    (folder / _checkpoint.MANIFEST).write_text('{"schema": 1, "named": {}}')  # before numbered files were listed
    assert _checkpoint.latest(folder) == old
    for i in range(3):
        newest = _checkpoint.save({"step": 8 + i}, folder, keep=1)
    assert newest.name == "ckpt-000010.pkl" and old.exists()
    assert _visible(folder) == ["ckpt-000007.pkl", "ckpt-000010.pkl"]
