"""A run's loop and its policy: when colabkit ends the child, and the status line that says so.

The loop runs on the caller's thread (a notebook cell's own thread: the only one Colab renders from). On
each turn it moves the child's output (``_stream``), redraws the status line about four times a second,
and applies the policy: a ``timeout``, Stop/KeyboardInterrupt, or a signal to the run's supervisor starts
the stop sequence at SIGINT; a ``budget`` starts it at SIGTERM a grace period before its end, with SIGKILL
due at the end; a second Stop jumps to SIGKILL; processes a finished script left behind get SIGTERM, then
SIGKILL; memory creep that is about to fill the GPU sends a script that follows the checkpoint contract the
budget's SIGTERM early (``_memory``). Each step is handed to the supervisor, which sends its signal to every process of the run and
carries on from there if this process dies. It returns once the script, every process of the run (the
supervisor exits after the last) and the pipe are done.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from . import _display, _format
from ._launch import Supervised
from ._monitor import Sampler
from ._spec import Budget, RunSpec
from ._stop import INT, KILL, TERM, Stopper, Tree
from ._stream import Output, unwritable

if TYPE_CHECKING:
    from ._keep import Keeper
    from ._memory import MemoryWatch

__all__ = ["Loop", "countdown"]

_TURN_S = 0.05  # the loop waits at most this long for output before it looks at the clock
_MEMORY_S = 1.0  # steps.csv is read this often (it may be on Drive)


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
    if reason == "creep" and due is not None:
        return f" · memory creep: SIGTERM sent, SIGKILL in {_format.format_duration(max(0.0, due - elapsed))}"
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
    peak = sampler.peaks() if sampler.gpu_count > 1 else sampler.peak_used()
    return _display.format_status(sampler.latest, peak, elapsed, gpu=sampler.gpu_count > 0)


class Loop:
    """One run's loop. After :meth:`run`, ``reason`` says why colabkit ended the child (``"timeout"``,
    ``"budget"``, ``"interrupt"``, ``"signal"`` (its supervisor was signalled), or ``None`` when it ended by
    itself), ``user_interrupt`` whether Stop was pressed twice, and ``term_sent`` when the budget's SIGTERM
    went out (seconds after the start).

    An observer (``RunSpec.observer``, for tests) is called with the loop on every turn and may read
    ``pid``, ``run_dir``, ``seen`` and ``status_text``.
    """

    def _limit(self, plan: Budget) -> str:
        """What ends the run: its budget, or the machine's limit when that comes first."""
        budget = f"budget of {_format.format_span(plan.budget)}"
        if plan.vm_limited:
            return f"{self.limit_label or 'the machine time limit'} (before the {budget})"
        return budget

    def __init__(
        self,
        spec: RunSpec,
        *,
        child: Supervised,
        tree: Tree,
        output: Output,
        sampler: Sampler | None,
        status: _display.StatusLine,
        plan: Budget | None,
        started: float,
        run_dir: Path,
        memory: MemoryWatch | None = None,
        keeper: Keeper | None = None,
        limit_label: str | None = None,
    ) -> None:
        self.spec = spec
        self.limit_label = limit_label  # the machine's limit that comes before the budget ("the Kaggle session's ~12 h limit")
        self.keeper = keeper  # the run folder's copy to Drive, the live status for attach, the heartbeat
        self.memory = memory
        self.chart = _display.Chart(status.mode, "memory timeline") if memory is not None else None
        self._memory_at = -1e18
        self.child = child
        self.tree = tree
        self.output = output
        self.sampler = sampler
        self.status = status
        self.plan = plan
        self.started = started
        self.run_dir = run_dir
        self.stopper = Stopper(tree, spec.stop, spec.clock)
        self.stopper.on_begin = lambda step, seconds: child.tell(step, seconds, self.reason or "none")
        self.reason: str | None = None
        self.user_interrupt = False
        self.term_sent: float | None = None
        self.csv_noted = False  # whether the loss of metrics.csv was said

    @property
    def pid(self) -> int:
        """The script's pid (also its process group)."""
        return int(self.child.pid)

    @property
    def seen(self) -> str:
        return self.output.seen

    @property
    def status_text(self) -> str:
        return self.output.view.status

    def _status(self, elapsed: float) -> str:
        stopper = self.stopper
        text = status_text(self.sampler, elapsed)
        if self.memory is not None and self.sampler is not None and self.status.mode == "terminal":
            self.memory.note_sample(self.sampler.latest)
            spark = self.memory.sparkline()
            if spark:
                text += f" · {spark}"
        return text + countdown(
            elapsed,
            reason=self.reason,
            step=stopper.step,
            due=stopper.deadline - self.started if stopper.deadline is not None else None,
            budget=self.plan,
            term_sent=self.term_sent,
        )

    def run(self) -> None:
        """Move output until the run's processes and its pipe are done, ending them when the policy says so."""
        spec, child, tree, stopper, output = self.spec, self.child, self.tree, self.stopper, self.output
        clock = spec.clock
        times = spec.stop
        started = self.started
        exited_at: float | None = None
        while True:
            try:
                output.pump(_TURN_S, clock())
                now = clock()
                child.poll()
                if spec.observer is not None:
                    spec.observer(self)
                if self.sampler is not None and self.sampler.csv_error is not None and not self.csv_noted:
                    self.csv_noted = True
                    unwritable("metrics.csv", self.sampler.csv_error, self.run_dir, "the monitor goes on in memory")
                if output.view.due(now):
                    text = self._status(now - started)
                    if self.keeper is not None:
                        text = self.keeper.turn(now, text)
                    output.view.status = text
                    if self.status.mode != "terminal":
                        self.status.update(text, now)
                    output.view.render(now)
                if exited_at is None and child.script_done:
                    exited_at = now
                elif exited_at is None:
                    tree.walk(now)
                if child.signals and not stopper.started and exited_at is None:
                    # someone signalled the supervisor (a container shutting down, ``kill``): stop like Stop does
                    self.reason = "signal"
                    stopper.begin(INT, now)
                    output.say(f"the run's supervisor got signal {child.signals[0]}: stopping the run")
                if spec.timeout is not None and not stopper.started and now - started >= spec.timeout:
                    self.reason = "timeout"
                    stopper.begin(INT, now)
                    output.say(
                        f"timeout of {_format.format_span(spec.timeout)} reached: sent SIGINT; SIGTERM in "
                        f"{_format.format_span(times.int_grace)}, then SIGKILL {_format.format_span(times.term_grace)} "
                        "later unless the script exits"
                    )
                if self.memory is not None and now - self._memory_at >= _MEMORY_S:
                    self._memory_at = now
                    self._watch_memory(now, exited_at)
                plan = self.plan
                if plan is not None and not stopper.started and exited_at is None and now - started >= plan.term_at:
                    if self.keeper is not None:
                        self.keeper.before_stop()  # the last copy to Drive before the script is told to stop
                        now = clock()
                    self.reason = "budget"
                    self.term_sent = now - started
                    stopper.begin(TERM, now, until=started + plan.kill_at)
                    output.say(
                        f"{self._limit(plan)}: sent SIGTERM after "
                        f"{_format.format_duration(now - started)}; SIGKILL in "
                        f"{_format.format_span(round(plan.kill_at - (now - started), 1))} unless the script exits"
                    )
                if stopper.started:
                    if exited_at is not None and now - exited_at >= times.pipe_grace and stopper.targets.members():
                        # the script has exited: the grace it had to save is over; what it left behind gets the
                        # leftovers' waits (SIGTERM now, SIGKILL after term_grace), not the rest of that grace
                        if stopper.step == INT:
                            stopper.begin(TERM, now)
                        elif stopper.step == TERM and stopper.deadline is not None:
                            stopper.deadline = min(stopper.deadline, exited_at + times.pipe_grace + times.term_grace)
                    state = stopper.poll(now)
                    if state == "done":
                        gone = child.finished
                        if gone and (output.ended or now - (exited_at or now) >= times.pipe_grace):
                            return
                        if not gone and exited_at is not None and now - exited_at >= times.pipe_grace + times.kill_wait:
                            return  # the supervisor did not exit although nothing is left: leave it to itself
                    elif state == KILL and self.reason == "budget" and plan is not None:
                        output.say(f"{self._limit(plan)} is over: sent SIGKILL")
                    elif state == "survived":
                        _display.note(f"colabkit: processes of the run survive SIGKILL: {stopper.survivors}")
                        return
                    continue
                if exited_at is not None:
                    leftovers = tree.members()
                    if not leftovers and child.finished and output.ended:
                        return
                    if now - exited_at >= times.pipe_grace and leftovers:
                        # the script is done but left processes behind (workers, a server): they may hold the GPU
                        output.log.write(
                            f"\n[colabkit] ending {len(leftovers)} leftover process(es) of the run: {leftovers}\n".encode(),
                            own=True,
                        )
                        stopper.begin(TERM, now)
                    elif now - exited_at >= times.pipe_grace + times.kill_wait:
                        return  # the pipe is held outside the run; the reader is a daemon thread
            except KeyboardInterrupt:
                now = clock()
                if self.reason == "creep":
                    self.reason = "interrupt"
                if not stopper.started:
                    self.reason = "interrupt"
                    stopper.begin(INT, now)
                    again = "press Stop again" if self.status.mode == "notebook" else "press Ctrl-C again"
                    _display.note(f"colabkit: interrupted; stopping the run ({again} to kill it at once)")
                else:
                    self.user_interrupt = True
                    if self.reason == "budget":
                        self.reason = "interrupt"
                    stopper.begin(KILL, now)

    def _watch_memory(self, now: float, exited_at: float | None) -> None:
        """The rows the child appended: creep said once, the early-save signal, the chart in the cell."""
        memory, sampler = self.memory, self.sampler
        assert memory is not None
        elapsed = now - self.started
        total = None
        latest = sampler.latest if sampler is not None else None
        if latest is not None and latest.total:
            total = next((t for t in latest.total if t), None)
        for said in memory.poll(elapsed, total):
            self.output.say(said.removeprefix("colabkit: "))
        if memory.save_now() and not self.stopper.started and exited_at is None:
            if self.keeper is not None:
                self.keeper.before_stop()
            grace = memory.grace
            self.reason = "creep"
            self.term_sent = elapsed
            self.stopper.begin(TERM, now, until=now + grace)
            self.output.say(
                f"memory creep will fill the GPU in ~{_format.format_duration(memory.creep.seconds_left)}: sent SIGTERM "  # type: ignore[union-attr]
                f"so the script saves a checkpoint, as a budget does; SIGKILL in {_format.format_span(grace)} unless it exits"
            )
        gpu = sampler is not None and sampler.gpu_count > 0
        draw = self.chart is not None and self.chart.mode == "notebook" and memory.chart_due(elapsed, gpu=gpu)
        save = memory.svg_due(elapsed)
        if draw or save:
            t0 = sampler.started_at if sampler is not None else None
            svg = memory.svg(sampler.samples if sampler is not None else (), f"{self.spec.script}: running", t0)
            if draw:
                self.chart.update(svg)  # type: ignore[union-attr]
            if save:
                memory.write_svg(svg, elapsed)
