"""The step a run reached, read from what it prints, without the script's help: a tqdm counter, or a line that
starts with ``step N`` / ``iter N`` (nanoGPT), or pytorch/examples' ``Epoch: [3][ 10/5005]``.

:class:`StepWatch` takes the output as the run's pump hands it on and keeps the newest step it saw; it looks
only at the end of each piece (the newest counter is there), so a flood costs it a few kilobytes a turn.
A tqdm bar under an ``Epoch N:`` prefix (Lightning's) counts batches in that epoch, not steps: it gives the
epoch and the batch, and the step stays what the checkpoints say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Progress", "StepWatch", "describe_step", "format_count"]

_LOOK_BACK = 4096  # characters of each piece looked at: the newest counter is near its end
# tqdm's "{n_fmt}/{total_fmt} [" (a bar with a total) and "{n_fmt}it [" (without); plain integers only
_TQDM = re.compile(r"(?<![\d.])(\d+)/(\d+) \[\d")
_TQDM_OPEN = re.compile(r"(?<![\d.])(\d+)it \[\d")
_LINE = re.compile(r"^\W{0,3}(?:global[ _]step|step|iter|iteration)\s*[:=#]?\s*(\d+)\b", re.IGNORECASE)
_EPOCH_PREFIX = re.compile(r"^\s*Epoch\s+(\d+)\b")
_EXAMPLES_EPOCH = re.compile(r"Epoch: \[(\d+)\]\[\s*(\d+)/(\d+)\]")


def format_count(n: int | None) -> str:
    """``7,100``; ``n/a`` for ``None``."""
    return "n/a" if n is None else f"{n:,}"


@dataclass(frozen=True)
class Progress:
    """What the output told last: the ``step`` (and ``total``) of the training, or the ``epoch`` and the
    ``batch`` of ``batches`` in it; ``None`` where it did not say."""

    step: int | None = None
    total: int | None = None
    epoch: int | None = None
    batch: int | None = None
    batches: int | None = None

    def describe(self) -> str:
        """``step 7,100 of 15,000``, ``epoch 3, batch 450 of 1,000``, or ``""``."""
        if self.step is not None:
            of = f" of {format_count(self.total)}" if self.total else ""
            return f"step {format_count(self.step)}{of}"
        if self.epoch is not None:
            batch = (
                f", batch {format_count(self.batch)} of {format_count(self.batches)}"
                if self.batch is not None
                else ""
            )
            return f"epoch {self.epoch}{batch}"
        return ""


class StepWatch:
    """The newest step in a run's output. Feed it text as it arrives; read :attr:`progress`."""

    def __init__(self) -> None:
        self._carry = ""
        self.progress = Progress()
        self.changed = False  # set when progress changes; the reader clears it

    def feed(self, text: str) -> None:
        if not text:
            return
        window = (self._carry + text)[-_LOOK_BACK:]
        cut = max(window.rfind("\n"), window.rfind("\r"))
        self._carry = window[cut + 1 :][-_LOOK_BACK:]
        found = _scan(window)
        if found is not None and found != self.progress:
            self.progress = found
            self.changed = True

    @property
    def step(self) -> int | None:
        return self.progress.step


def _scan(window: str) -> Progress | None:
    """The newest progress in ``window``: its last line that tells one (a line's last ``\\r`` redraw counts)."""
    for line in reversed(re.split(r"[\r\n]", window)):
        if not line.strip():
            continue
        found = _one(line)
        if found is not None:
            return found
    return None


def _one(line: str) -> Progress | None:
    m = _EXAMPLES_EPOCH.search(line)
    if m:
        return Progress(epoch=int(m.group(1)), batch=int(m.group(2)), batches=int(m.group(3)))
    bars = list(_TQDM.finditer(line))
    epoch = _EPOCH_PREFIX.match(line)
    if bars:
        n, total = int(bars[-1].group(1)), int(bars[-1].group(2))
        if epoch:
            return Progress(epoch=int(epoch.group(1)), batch=n, batches=total)
        return Progress(step=n, total=total)
    open_bars = list(_TQDM_OPEN.finditer(line))
    if open_bars and not epoch:
        return Progress(step=int(open_bars[-1].group(1)))
    m = _LINE.match(line)
    if m:
        return Progress(step=int(m.group(1)))
    return None


def describe_step(step: int | None, checkpoint_step: int | None = None) -> str:
    """``at step 7,100`` (and ``, checkpoint at step 7,000`` when that is older), or ``""``."""
    if step is None and checkpoint_step is None:
        return ""
    if step is None or (checkpoint_step is not None and checkpoint_step >= step):
        return f"at step {format_count(checkpoint_step)}"
    older = f" (checkpoint at step {format_count(checkpoint_step)})" if checkpoint_step is not None else ""
    return f"at step {format_count(step)}{older}"
