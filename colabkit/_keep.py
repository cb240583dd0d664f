"""A run's side of surviving a disconnect, in one place for the run and its loop: where its folder is written
(the VM's disk first when the run folder is on Drive, copied there by ``_mirror``), the live status that
``attach()`` shows, the step it reached (``_progress``) and the heartbeat of a quiet run (``_heartbeat``).

``run()`` makes a :class:`Keeper` for the run folder as users see it (``<project>/runs/<id>/``); the run writes
into :attr:`Keeper.folder`; the loop hands it the output as it arrives (:meth:`heard`) and calls :meth:`turn`
on each turn; before the budget's SIGTERM the loop calls :meth:`before_stop` (the last copy is made before the
script is stopped) and at the end the run calls :meth:`finish`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from . import _display, _heartbeat, _mirror, _mounts, _progress, _resume, _runtime
from ._attach import LiveStatus

__all__ = ["FINAL_COPY_S", "PRE_STOP_COPY_S", "STEP_WRITE_S", "Keeper", "remount_for"]

PRE_STOP_COPY_S = 10.0  # the copy before the budget's SIGTERM waits at most this long
FINAL_COPY_S = 60.0  # the copy at the end of a run waits at most this long
STEP_WRITE_S = 5.0  # summary.json gets a new step at most this often while the run goes on


def remount_for(folder: Path) -> Callable[[], object] | None:
    """How to remount the Drive (google.colab's, on Colab) that holds ``folder``, through ``mount()``'s own healing
    path; ``None`` for any other mount (ocamlfuse needs its credentials: the run goes on, the copy waits for it)."""
    found = _mounts.mount_of(Path(os.path.abspath(folder)))
    if found is None or found.fstype != _mounts.DRIVE_FSTYPE or not _runtime.detect_runtime().is_colab:
        return None
    point = found.point

    def remount() -> object:
        from . import _drive

        return _drive.mount("drive", mountpoint=point)

    return remount


class Keeper:
    """One run's record through a disconnect (see the module docstring).

    ``remote`` is the run folder as users see it; :attr:`folder` is where the run writes (``remote`` itself when it
    is not on a FUSE mount, or ``local_first=False``). ``write_summary`` is called with ``last_step=N`` when the
    step the output tells changes (at most every ``STEP_WRITE_S``).
    """

    def __init__(
        self,
        remote: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        local_first: bool | None = None,
        heartbeat_s: float | None = _heartbeat.DEFAULT_S,
        remount: Callable[[], object] | None = None,
        write_summary: Callable[..., None] | None = None,
        mode: str | None = None,
    ) -> None:
        self.remote = remote
        self.clock = clock
        self.write_summary = write_summary
        wanted = _mirror.wanted(remote.parent) if local_first is None else local_first
        self.mirror: _mirror.Mirror | None = None
        if wanted:
            try:
                self.mirror = _mirror.Mirror.create(
                    remote, remount=remount if remount is not None else remount_for(remote), clock=clock
                )
            except OSError as exc:  # no room on the VM's disk: the run writes on Drive as it did before
                _display.note(f"colabkit: cannot keep the run folder on this VM's disk ({exc}); it is written on Drive")
        self.folder = self.mirror.local if self.mirror is not None else remote
        self.live = LiveStatus(self.folder)
        self.steps = _progress.StepWatch()
        rt = _runtime.detect_runtime()
        lines = _heartbeat.wants_lines(mode or _runtime.display_mode(), rt.front_end, rt.is_colab)
        self.heartbeat = _heartbeat.Heartbeat(heartbeat_s, lines=lines, now=clock())
        self._step_written: int | None = None
        self._step_at = float("-inf")
        self.stopped_copy: bool | None = None  # whether the copy before the budget's SIGTERM got everything
        self.done = False  # finish(), abort() or discard() ran

    @property
    def local_first(self) -> bool:
        return self.mirror is not None

    # -- while the run goes on ---------------------------------------------------------------------------
    def start(self) -> None:
        """The first copy (the summary that says ``running``), so Drive shows the run from its first second."""
        if self.mirror is not None:
            self.mirror.sync(PRE_STOP_COPY_S)

    def heard(self, text: str, now: float) -> None:
        """Output arrived (decoded)."""
        if text:
            self.steps.feed(text)
            self.heartbeat.heard(now)

    def turn(self, now: float, status: str) -> str:
        """On each turn of the loop: the status line as it should read (a quiet run's tail added), the live status
        for attach, the step into the summary, the copy to Drive, and the heartbeat line when one is due."""
        text = status + self.heartbeat.suffix(now)
        step = self.steps.step
        self.live.update(text, now, step=step)
        if self.write_summary is not None and step is not None and step != self._step_written:
            if now - self._step_at >= STEP_WRITE_S:
                self._step_at = now
                self._step_written = step
                with contextlib.suppress(OSError):  # the end says it when the folder fails; the run goes on
                    self.write_summary(last_step=step)
        if self.mirror is not None:
            self.mirror.tick(now)
        beat = self.heartbeat.beat(now, status)
        if beat is not None:
            _display.note(beat)
        return text

    def before_stop(self) -> None:
        """Before the budget (or the VM's limit) stops the script: the last copy, bounded."""
        if self.mirror is not None:
            self.stopped_copy = self.mirror.sync(PRE_STOP_COPY_S)

    # -- the end -----------------------------------------------------------------------------------------
    def last_step(self) -> int | None:
        return self.steps.step

    def ending(self, where: Path | None) -> dict[str, object]:
        """The summary's fields about the step the run reached: the output's counter, else its newest checkpoint's."""
        found = self.checkpoint(where)
        ckpt_step = found.step if found is not None else None
        step = self.steps.step
        if step is None or (ckpt_step is not None and ckpt_step > step):
            step = ckpt_step
        return {
            "last_step": step,
            "checkpoint_step": ckpt_step,
            "checkpoint": str(found.path) if found is not None else None,
        }

    def checkpoint(self, where: Path | None) -> _resume.Found | None:
        """The newest complete checkpoint the run left in ``where``, when its mount answers (never raises)."""
        if where is None or _resume.unanswered(where) is not None:
            return None
        try:
            return _resume.find(where)
        except OSError:
            return None

    def finish(self) -> dict[str, object] | None:
        """After the final summary was written into :attr:`folder`: the last copy to Drive (bounded), then the local
        folder removed when Drive holds all of it. Returns the copy's report (``None`` when not local-first)."""
        self.done = True
        self.live.close()
        if self.mirror is None:
            return None
        done = self.mirror.sync(FINAL_COPY_S)
        report = self.mirror.report()
        self.mirror.close(remove_local=done)
        if not done:
            _display.note(
                f"colabkit: the run folder is not all on Drive yet: it is kept on this VM's disk at {self.mirror.local}; "
                f"colabkit.runs() copies the rest to {self.remote} once Drive answers"
            )
        return report

    def abort(self) -> None:
        """After an error inside run(): one bounded copy of what there is, the local folder kept (once; none after
        :meth:`finish`)."""
        if self.done:
            return
        self.done = True
        self.live.close()
        if self.mirror is not None:
            with contextlib.suppress(Exception):
                self.mirror.sync(PRE_STOP_COPY_S)
            self.mirror.close(remove_local=False)

    def discard(self) -> None:
        """Nothing ran (the run folder could not be written): the local folder goes, nothing is copied."""
        self.done = True
        if self.mirror is not None:
            self.mirror.close(remove_local=False)
            shutil.rmtree(self.mirror.local, ignore_errors=True)
