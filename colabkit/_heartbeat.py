"""The heartbeat of a quiet run: when the script prints nothing for a while, the status line says so and keeps
moving, and a front end that takes a long silence for a hang gets a short status line at that interval.

Nothing of it goes to ``output.log``: the log holds the script's bytes and colabkit's own decisions only.
Which front ends need the line: Colab driven by the VS Code extension or by google-colab-cli (or a Colab kernel
whose front end is not known to be the browser), which see the cell's stream output but not a display updated
in place. A pipe already gets a status line every ``_display.PLAIN_STATUS_S``; a terminal and a browser see the
status line move.
"""

from __future__ import annotations

from ._format import format_duration

__all__ = ["DEFAULT_S", "Heartbeat", "wants_lines"]

DEFAULT_S = 60.0  # seconds of silence before the heartbeat shows


def wants_lines(mode: str, front_end: str | None, on_colab: bool) -> bool:
    """Whether the screen should get a heartbeat line (not only the status line): a notebook cell whose front
    end may not show a display updated in place (VS Code, google-colab-cli, or not known to be the browser)."""
    if mode != "notebook":
        return False
    if front_end in ("vscode", "headless"):
        return True
    return on_colab and front_end != "browser"


class Heartbeat:
    """Silence on a run's output, on the caller's clock.

    Call :meth:`heard` whenever output arrives and :meth:`beat` on each turn: it returns the line to show when
    ``every_s`` seconds of silence (or of silence since the last beat) have passed and lines are wanted, else
    ``None``. :meth:`suffix` is the status line's tail while the run is quiet.

    Examples:
        >>> hb = Heartbeat(60.0, lines=True, now=0.0)
        >>> hb.beat(59.0, "GPU0 3.2 GiB/15.0 GiB · 59s") is None
        True
        >>> hb.beat(60.0, "GPU0 3.2 GiB/15.0 GiB · 1m00s")
        '[colabkit] GPU0 3.2 GiB/15.0 GiB · 1m00s · no output for 1m00s'
    """

    def __init__(self, every_s: float | None = DEFAULT_S, *, lines: bool, now: float) -> None:
        self.every_s = every_s if every_s else None  # None or 0: no heartbeat
        self.lines = lines
        self.last_output = now
        self._last_beat: float | None = None
        self.beats = 0  # lines shown

    def heard(self, now: float) -> None:
        self.last_output = now
        self._last_beat = None

    def quiet_s(self, now: float) -> float:
        return max(0.0, now - self.last_output)

    def suffix(self, now: float) -> str:
        """`` · no output for 1m05s`` once the run has been quiet for ``every_s``, else ``""``."""
        if self.every_s is None or self.quiet_s(now) < self.every_s:
            return ""
        return f" · no output for {format_duration(self.quiet_s(now))}"

    def beat(self, now: float, status: str) -> str | None:
        """The heartbeat line due now, if any (at most one per ``every_s`` of silence)."""
        if self.every_s is None or not self.lines:
            return None
        since = self._last_beat if self._last_beat is not None else self.last_output
        if now - since < self.every_s:
            return None
        self._last_beat = now
        self.beats += 1
        return f"[colabkit] {status}{self.suffix(now)}"
