"""A run's loop and its policy: when colabkit ends the child, and the status line that says so.

The loop runs on the caller's thread (a notebook cell's own thread: the only one Colab renders from). On
each turn it moves the child's output (``_stream``), redraws the status line about four times a second,
and applies the policy: a ``timeout`` or Stop/KeyboardInterrupt starts the stop sequence at SIGINT; a
``budget`` starts it at SIGTERM a grace period before its end, with SIGKILL due at the end; a second
Stop jumps to SIGKILL; processes a finished script left behind get SIGTERM, then SIGKILL. It returns
once the child, its processes and its pipes are done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import _display, _format
from ._monitor import Sampler
from ._spec import Budget, RunSpec
from ._stop import INT, KILL, TERM, Stopper, Tree
from ._stream import Output, drive_lost

__all__ = ["Loop", "countdown"]

_TURN_S = 0.05  # the loop waits at most this long for output before it looks at the clock


def countdown(
    elapsed: float,
    *,
    reason: str | None,
    step: str | None,
    due: float | None,
    budget: Budget | None,
    term_sent: float | None,
) -> str:
    """The status line's tail while colabkit ends a run: which signal went out and when the next one is due.

    ``due`` (when the stop sequence's next step is due) and ``term_sent`` are seconds after the start.

    Examples:
        >>> countdown(3.0, reason="timeout", step="int", due=10.5, budget=None, term_sent=None)
        ' · SIGINT sent, SIGTERM in 7.5s'
    """
    if reason in ("timeout", "interrupt") and due is not None:
        sent, then = {INT: ("SIGINT", "SIGTERM"), TERM: ("SIGTERM", "SIGKILL")}.get(step or "", ("SIGKILL", ""))
        left = _format.format_duration(max(0.0, due - elapsed))
        return f" · {sent} sent, {then} in {left}" if then else f" · {sent} sent"
    if budget is not None:
        left = _format.format_duration(max(0.0, budget.kill_at - elapsed))
        return f" · SIGTERM sent, SIGKILL in {left}" if term_sent is not None else f" · {left} left"
    return ""


def status_text(sampler: Sampler | None, elapsed: float) -> str:
    """GPU memory, utilisation, temperature, the child's RAM and the time (just the time without a monitor)."""
    if sampler is None:
        return _format.format_duration(elapsed)
    return _display.format_status(sampler.latest, sampler.peak_used(), elapsed)


class Loop:
    """One run's loop. After :meth:`run`, ``reason`` says why colabkit ended the child (``"timeout"``,
    ``"budget"``, ``"interrupt"``, or ``None`` when it ended by itself), ``user_interrupt`` whether Stop was
    pressed twice, and ``term_sent`` when the budget's SIGTERM went out (seconds after the start).

    An observer (``RunSpec.observer``, for tests) is called with the loop on every turn and may read
    ``pid``, ``run_dir``, ``seen`` and ``status_text``.
    """

    def __init__(
        self,
        spec: RunSpec,
        *,
        proc: Any,
        tree: Tree,
        output: Output,
        sampler: Sampler | None,
        status: _display.StatusLine,
        plan: Budget | None,
        started: float,
        run_dir: Path,
    ) -> None:
        self.spec = spec
        self.proc = proc
        self.tree = tree
        self.output = output
        self.sampler = sampler
        self.status = status
        self.plan = plan
        self.started = started
        self.run_dir = run_dir
        self.stopper = Stopper(tree, spec.stop, spec.clock)
        self.reason: str | None = None
        self.user_interrupt = False
        self.term_sent: float | None = None

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    @property
    def seen(self) -> str:
        return self.output.seen

    @property
    def status_text(self) -> str:
        return self.output.view.status

    def _status(self, elapsed: float) -> str:
        stopper = self.stopper
        return status_text(self.sampler, elapsed) + countdown(
            elapsed,
            reason=self.reason,
            step=stopper.step,
            due=stopper.deadline - self.started if stopper.deadline is not None else None,
            budget=self.plan,
            term_sent=self.term_sent,
        )

    def run(self) -> None:
        """Move output until the child and its pipes are done, ending the child's processes when the policy says so."""
        spec, proc, tree, stopper, output = self.spec, self.proc, self.tree, self.stopper, self.output
        clock = spec.clock
        times = spec.stop
        started = self.started
        exited_at: float | None = None
        csv_noted = False
        while True:
            try:
                output.pump(_TURN_S, clock())
                now = clock()
                if spec.observer is not None:
                    spec.observer(self)
                if self.sampler is not None and self.sampler.csv_error is not None and not csv_noted:
                    csv_noted = True
                    drive_lost("metrics.csv", self.sampler.csv_error, "the monitor")
                if output.view.due(now):
                    text = self._status(now - started)
                    output.view.status = text
                    if self.status.mode != "terminal":
                        self.status.update(text, now)
                    output.view.render(now)
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                elif exited_at is None:
                    tree.walk(now)
                if spec.timeout is not None and not stopper.started and now - started >= spec.timeout:
                    self.reason = "timeout"
                    stopper.begin(INT, now)
                    output.say(
                        f"timeout of {_format.format_span(spec.timeout)} reached: sent SIGINT; SIGTERM in "
                        f"{_format.format_span(times.int_grace)}, then SIGKILL {_format.format_span(times.term_grace)} "
                        "later unless the script exits"
                    )
                plan = self.plan
                if plan is not None and not stopper.started and exited_at is None and now - started >= plan.term_at:
                    self.reason = "budget"
                    self.term_sent = now - started
                    stopper.begin(TERM, now, until=started + plan.kill_at)
                    output.say(
                        f"budget of {_format.format_span(plan.budget)}: sent SIGTERM after "
                        f"{_format.format_duration(now - started)}; SIGKILL in "
                        f"{_format.format_span(round(plan.kill_at - (now - started), 1))} unless the script exits"
                    )
                if stopper.started:
                    state = stopper.poll(now)
                    if state == "done" and proc.poll() is not None:
                        if output.ended or now - (exited_at or now) >= times.pipe_grace:
                            return
                    elif state == KILL and self.reason == "budget" and plan is not None:
                        output.say(f"budget of {_format.format_span(plan.budget)} is over: sent SIGKILL")
                    elif state == "survived":
                        _display.note(f"colabkit: processes of the run survive SIGKILL: {stopper.survivors}")
                        return
                    continue
                if exited_at is not None:
                    leftovers = tree.members()
                    if output.ended and not leftovers:
                        return
                    if now - exited_at >= times.pipe_grace and leftovers:
                        # the script is done but left processes behind (workers, a server): they may hold the GPU
                        output.log.write(
                            f"\n[colabkit] ending {len(leftovers)} leftover process(es) of the run: {leftovers}\n",
                            "colabkit",
                        )
                        stopper.begin(TERM, now)
                    elif now - exited_at >= times.pipe_grace + times.kill_wait:
                        return  # the pipes are held outside the tree; the reader is a daemon thread
            except KeyboardInterrupt:
                now = clock()
                if not stopper.started:
                    self.reason = "interrupt"
                    stopper.begin(INT, now)
                    _display.note("colabkit: interrupted; stopping the run (press Stop again to kill it at once)")
                else:
                    self.user_interrupt = True
                    if self.reason == "budget":
                        self.reason = "interrupt"
                    stopper.begin(KILL, now)
