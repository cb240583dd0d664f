"""A run folder that outlives Drive: written on the VM's own disk first, copied to its place on Drive as the run goes.

A run whose folder is on a FUSE mount (Drive through DriveFS or ocamlfuse) writes ``output.log``, ``metrics.csv``
and ``summary.json`` to a local folder (``$COLABKIT_CACHE/runs/<run>-<hash>``, on Colab the VM's disk) and a
:class:`Mirror` copies it to ``<project>/runs/<id>/`` every few seconds and at the end, each pass in a child
process with a deadline (``_copier``), verified by size; ``summary.json`` on Drive says how far the copy got.
When Drive dies (``[Errno 107]``) or hangs, the run goes on, the mirror says so once, keeps trying with a
growing pause, remounts a dead Drive through ``mount()``'s own healing path when a remount is given, and the
copy catches up as soon as Drive answers. Nothing here blocks the run's loop except :meth:`Mirror.sync`,
which waits for one pass with a bound (before the budget's SIGTERM and at the end).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import _display, _files, _format, _mounts
from ._mounts import DEAD_ERRNOS

__all__ = [
    "COPY_EVERY_S",
    "COPY_TIMEOUT_S",
    "COPIER",
    "MARKER",
    "Mirror",
    "catch_up",
    "local_dir",
    "wanted",
]

COPIER = Path(__file__).with_name("_copier.py")
COPY_EVERY_S = 5.0  # seconds between two passes while Drive answers
COPY_TIMEOUT_S = 30.0  # a pass that takes longer is ended: Drive hangs
BACKOFF_MAX_S = 60.0  # the longest pause between tries while Drive is down
REMOUNT_EVERY_S = 30.0  # between two remounts of a dead Drive
MARKER = ".mirror.json"  # in the local folder: where it is copied to


def wanted(root: Path) -> bool:
    """Whether run folders under ``root`` should be written locally first: ``root`` is on a FUSE mount."""
    found = _mounts.mount_of(Path(os.path.abspath(root)))
    return found is not None and found.fstype.startswith("fuse")


def local_base() -> Path:
    """Where local run folders live: ``$COLABKIT_CACHE/runs`` (``~/.cache/colabkit/runs``)."""
    base = _files.cache_dir()
    return base / "runs"


def local_dir(remote: Path) -> Path:
    """The local folder for the run folder ``remote``: its name and a hash of its full path."""
    key = hashlib.sha1(str(Path(os.path.abspath(remote))).encode()).hexdigest()[:8]
    return local_base() / f"{remote.name}-{key}"


@dataclass
class Pass:
    """What the last finished pass said: bytes on Drive of bytes here, files behind, the error if one failed."""

    bytes: int = 0
    of: int = 0
    behind: list[str] = field(default_factory=list)
    errno: int | None = None
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.errno is None and not self.behind


def _parse(out: bytes) -> Pass:
    try:
        data = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Pass(errno=errno.EIO, error="the copy said nothing readable")
    return Pass(
        bytes=int(data.get("bytes") or 0),
        of=int(data.get("of") or 0),
        behind=[str(b) for b in data.get("behind") or []],
        errno=data.get("errno"),
        error=data.get("error"),
    )


class Mirror:
    """Copies ``local`` to ``remote`` as a run goes (see the module docstring).

    ``remount`` (optional) is called on a worker thread to remount a Drive that died; ``clock`` is the run's.
    ``state`` is ``"live"`` while passes succeed, ``"dead"``, ``"hung"`` or ``"error"`` while they fail.
    """

    def __init__(
        self,
        local: Path,
        remote: Path,
        *,
        every_s: float | None = None,
        timeout_s: float | None = None,
        remount: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        say: Callable[[str], None] = _display.note,
    ) -> None:
        self.local = local
        self.remote = remote
        self.every_s = COPY_EVERY_S if every_s is None else every_s  # read now: a test may shorten them
        self.timeout_s = COPY_TIMEOUT_S if timeout_s is None else timeout_s
        self.remount = remount
        self.clock = clock
        self.say = say
        self.state = "live"
        self.last = Pass()
        self.passes = 0
        self.failures = 0  # passes failed in a row
        self._child: subprocess.Popen[bytes] | None = None
        self._child_started = 0.0
        self._next = 0.0  # on the clock: when the next pass may start
        self._outage_said = False
        self._remounter: threading.Thread | None = None
        self._next_remount = 0.0
        self.remounts = 0
        self.remount_error: str | None = None

    # -- the folder ------------------------------------------------------------------------------------
    @classmethod
    def create(cls, remote: Path, **options: object) -> Mirror:
        """A mirror for the (existing, empty) run folder ``remote``, its local folder made.

        Raises:
            OSError: the local folder cannot be made.
        """
        local = local_dir(remote)
        if local.exists():
            shutil.rmtree(local)
        local.mkdir(parents=True)
        _files.write_json(local / MARKER, {"remote": str(remote), "created": time.time()})
        return cls(local, remote, **options)  # type: ignore[arg-type]

    # -- passes ----------------------------------------------------------------------------------------
    def _start(self, now: float) -> None:
        self._child = subprocess.Popen(
            [
                sys.executable or "python3",
                "-I",
                "-S",
                str(COPIER),
                str(self.local),
                str(self.remote),
                _files.machine_tag(),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd="/",  # never a folder on the Drive it copies to
        )
        self._child_started = now

    def _poll(self, now: float) -> bool:
        """Take the running pass's answer if it is done; end it past its deadline. Whether none runs any more."""
        child = self._child
        if child is None:
            return True
        if child.poll() is None:
            if now - self._child_started < self.timeout_s:
                return False
            self._hung(now)
            return True
        self._handle(child, now)
        return True

    def _wait(self, deadline: float) -> None:
        """Wait for the running pass until ``deadline`` (on the clock), ending it there if it is not done."""
        child = self._child
        if child is None:
            return
        try:
            child.wait(timeout=max(0.01, deadline - self.clock()))
        except subprocess.TimeoutExpired:
            self._hung(self.clock())
            return
        self._handle(child, self.clock())

    def _hung(self, now: float) -> None:
        child = self._child
        assert child is not None
        child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.communicate(timeout=5.0)
        self._child = None
        self._failed(now, "hung", "a copy to Drive did not finish in time: Drive does not answer")

    def _handle(self, child: subprocess.Popen[bytes], now: float) -> None:
        out, _ = child.communicate()
        self._child = None
        result = _parse(out)
        self.passes += 1
        if result.errno is None:
            self._succeeded(now, result)
        else:
            self.last = result
            state = "dead" if result.errno in DEAD_ERRNOS else "error"
            self._failed(now, state, f"[Errno {result.errno}] {result.error}")

    def _succeeded(self, now: float, result: Pass) -> None:
        was = self.state
        self.last = result
        self.state = "live"
        self.failures = 0
        self._next = now + self.every_s
        if was != "live" and self._outage_said:
            self._outage_said = False
            self.say(
                f"colabkit: Drive answers again: the run folder on Drive caught up "
                f"({_format.format_bytes(result.bytes)} of {_format.format_bytes(result.of)}) at {self.remote}"
            )

    def _failed(self, now: float, state: str, why: str) -> None:
        self.state = state
        self.failures += 1
        pause = min(BACKOFF_MAX_S, self.every_s * 2 ** min(self.failures, 6))
        self._next = now + pause
        if not self._outage_said:
            self._outage_said = True
            then = (
                "colabkit remounts it when it can"
                if self.remount is not None and state == "dead"
                else ("it is copied as soon as Drive answers again")
            )
            self.say(
                f"colabkit: cannot copy the run folder to Drive ({why}); the run goes on and its folder is kept "
                f"on this VM's disk at {self.local}: {then}"
            )

    def tick(self, now: float) -> None:
        """One look, never blocking: collect a finished pass, start the next one when due, remount when it helps."""
        if not self._poll(now):
            return
        if self.state == "dead":
            self._maybe_remount(now)
        if now >= self._next and not self._remounting:
            self._start(now)

    def sync(self, timeout_s: float) -> bool:
        """One pass from now, waited for up to ``timeout_s`` (a pass already running, and a remount of a dead
        Drive, are waited for first). Returns whether Drive now holds everything there is here.
        """
        if (self.state == "hung" or self._child is not None) and not self._answers():
            # hung (known, or a pass still out when the mount stopped answering), asked with the probe's deadline:
            # no pass could get through, so none is waited for
            if self._child is not None:
                self._hung(self.clock())
            return False
        deadline = self.clock() + timeout_s
        self._wait_remount(deadline)
        self._wait(deadline)
        for _ in range(2):  # a pass that finds Drive dead: remount it, then one more pass
            if self.state == "dead" and self.remount is not None:
                self._maybe_remount(self.clock(), force=True)
                self._wait_remount(deadline)
            if self.clock() >= deadline:
                return False
            self._start(self.clock())
            self._wait(deadline)
            if self.state != "dead" or self.remount is None:
                break
        return self.state == "live" and self.last.complete

    def _answers(self) -> bool:
        """Whether the mount under the Drive folder answers now (a bounded probe)."""
        found = _mounts.mount_of(self.remote)
        if found is None:
            return True
        answer = _mounts.probe(found.point)  # asked afresh: a remembered "hung" may be over already
        _mounts.remember(found.point, answer)
        return answer.state == "live"

    # -- remounting ------------------------------------------------------------------------------------
    @property
    def _remounting(self) -> bool:
        return self._remounter is not None and self._remounter.is_alive()

    def _maybe_remount(self, now: float, *, force: bool = False) -> None:
        if self.remount is None or self._remounting or (now < self._next_remount and not force):
            return
        self._next_remount = now + REMOUNT_EVERY_S
        self._remounter = threading.Thread(target=self._remount, name="colabkit-remount", daemon=True)
        self._remounter.start()

    def _remount(self) -> None:
        assert self.remount is not None
        try:
            self.remount()
            self.remounts += 1
            self.remount_error = None
        except Exception as exc:  # a MountError that says why; the passes keep trying either way
            text = str(getattr(exc, "message", None) or exc)
            if text != self.remount_error:
                self.say(f"colabkit: remounting Drive failed: {text}")
            self.remount_error = text
        finally:
            self._next = min(self._next, self.clock())  # try a pass at once

    def _wait_remount(self, deadline: float) -> None:
        thread = self._remounter
        if thread is not None and thread.is_alive():
            thread.join(max(0.0, deadline - self.clock()))

    # -- the end ---------------------------------------------------------------------------------------
    def close(self, *, remove_local: bool) -> None:
        """End a running pass; with ``remove_local`` and everything on Drive, delete the local folder."""
        if self._child is not None:
            self._child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._child.communicate(timeout=5.0)
            self._child = None
        thread = self._remounter
        if thread is not None:
            thread.join(self.timeout_s)  # a remount is bounded by its own timeout
        if remove_local and self.state == "live" and self.last.complete:
            shutil.rmtree(self.local, ignore_errors=True)

    def report(self) -> dict[str, object]:
        """For the result and ``summary.json``: where the folder is and how far the copy got."""
        return {
            "state": "complete" if self.state == "live" and self.last.complete else self.state,
            "bytes": self.last.bytes,
            "of": self.last.of,
            "local_dir": str(self.local),
        }


def catch_up(remote: Path, *, timeout_s: float = COPY_TIMEOUT_S) -> bool | None:
    """Finish the copy of a run folder whose local folder is still on this machine (a run whose last copy
    failed, or whose launcher died), the local folder removed once Drive holds all of it; ``None`` when there is
    no local folder for it, else whether it is complete. Only for a run that is over.

    Never raises for Drive's sake: a dead or hung Drive is a ``False``.
    """
    local = local_dir(remote)
    marker = _files.read_json(local / MARKER)
    if marker is None or marker.get("remote") != str(remote):
        return None
    mirror = Mirror(local, remote, timeout_s=timeout_s, say=lambda text: None)
    done = mirror.sync(timeout_s)
    mirror.close(remove_local=done)  # all of it on Drive: this machine's copy has done its job
    return done
