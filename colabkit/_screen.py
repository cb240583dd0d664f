"""The bottom of a terminal, as a script's output draws it: finished lines scroll out, the rows it redraws stay.

Progress bars redraw in place: one bar with ``\\r``, nested bars (tqdm's ``position=``) by moving the cursor
up with ``ESC[A`` and down with ``\\n``. A notebook understands neither ``ESC[A`` nor a row above the last, so
``Screen`` plays the terminal: it keeps the *window* (the last rows the cursor may still return to; one row
until the script moves up) and hands every row that scrolls out of it to ``committed``. Text is written at
the cursor's column over what is there, as a terminal does; colour escapes (``ESC[...m``) take no columns;
``ESC[K``/``ESC[2K`` erase, ``ESC[nA``/``B``/``C``/``D``/``G`` move; other control sequences are dropped.

Text without control characters, the bulk of any log, takes a fast path of ``str.split`` alone.
"""

from __future__ import annotations

import collections
import itertools
import re
from collections.abc import Iterator

__all__ = ["MAX_WINDOW", "Screen", "cut", "visible_len"]

MAX_WINDOW = 30  # rows a script may redraw above its last line; farther up is left as it was
_SGR = re.compile(r"\x1b\[[0-9;:]*m")
_TOKEN = re.compile(
    r"(?P<text>(?:[^\x1b\r\n\b]|\x1b\[[0-9;:]*m)+)"  # printable text and colours
    r"|\x1b\[(?P<args>[0-9;?]*)(?P<cmd>[@-~])"  # a control sequence (CSI)
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # an operating system command (titles, hyperlinks): dropped
    r"|\x1b.?"  # any other escape: dropped
    r"|(?P<ctl>[\r\n\b])"
)
_RESET = "\x1b[0m"
_COMPLETE = re.compile(r"\x1b(?:\[[0-9;?:]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[^\[\]])")
_CARRY_MAX = 256  # an escape sequence still open at the end of a read waits for the next one, up to this long
TRACEBACK = "Traceback (most recent call last):"
WHOLE_MAX = 400  # lines from a traceback's first one that are never cut (a traceback is shown whole)


class _Kept:
    """The finished lines a caller has not taken yet, as a screen with a line budget keeps them: the first
    ``keep // 3`` (a burst's head: a config dump, the top of ``--help``), the last ones up to ``keep`` (its tail),
    only a count of those between, and from a traceback's first line on, ``WHOLE_MAX`` lines whole."""

    def __init__(self, keep: int) -> None:
        self.head_max = max(1, keep // 3)
        self.head: list[str] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=max(1, keep - self.head_max))
        self.whole: list[str] = []
        self.whole_left = 0  # lines still kept whole after a traceback began

    def __len__(self) -> int:
        return len(self.head) + len(self.tail) + len(self.whole)

    def __iter__(self) -> Iterator[str]:
        return itertools.chain(self.head, self.tail, self.whole)

    def append(self, line: str) -> None:
        if TRACEBACK in line:
            self.whole_left = WHOLE_MAX
        if self.whole_left:
            self.whole_left -= 1
            self.whole.append(line)
        elif len(self.head) < self.head_max and not self.tail:
            self.head.append(line)
        else:
            self.tail.append(line)

    def extend(self, lines: list[str], *, traceback: bool) -> None:
        """``append`` each line; ``traceback``: whether one of them may begin one (else the fast way)."""
        if traceback or self.whole_left:
            for line in lines:
                self.append(line)
            return
        room = 0 if self.tail else max(0, self.head_max - len(self.head))
        self.head.extend(lines[:room])
        self.tail.extend(lines[room:])

    def pop(self) -> str:
        for part in (self.whole, self.tail, self.head):
            if part:
                return part.pop()
        raise IndexError("pop from no lines")

    def clear(self) -> None:
        self.head.clear()
        self.tail.clear()
        self.whole.clear()


def visible_len(text: str) -> int:
    """Columns ``text`` takes on a terminal: colour escapes count for nothing."""
    return len(_SGR.sub("", text)) if "\x1b" in text else len(text)


def _cells(text: str) -> tuple[list[str], str]:
    """``text`` as one string per column (each with the colour escapes before it), and the escapes after the last."""
    cells: list[str] = []
    pending = ""
    pos = 0
    for m in _SGR.finditer(text):
        for ch in text[pos : m.start()]:
            cells.append(pending + ch)
            pending = ""
        pending += m.group()
        pos = m.end()
    for ch in text[pos:]:
        cells.append(pending + ch)
        pending = ""
    return cells, pending


def cut(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns without counting colour escapes, and with the colour reset kept.

    Examples:
        >>> cut("\\x1b[32mgreen text\\x1b[0m", 5)
        '\\x1b[32mgreen\\x1b[0m'
    """
    if visible_len(text) <= width:
        return text
    if "\x1b" not in text:
        return text[: max(0, width)]
    cells, _ = _cells(text)
    shown = "".join(cells[: max(0, width)])
    return shown + _RESET  # whatever colour was on at the cut is switched off


def _overlay(row: str, col: int, text: str) -> str:
    """``row`` with ``text`` written over it from column ``col`` (spaces fill a gap)."""
    if "\x1b" not in row and "\x1b" not in text:
        if col >= len(row):
            return row + " " * (col - len(row)) + text
        return row[:col] + text + row[col + len(text) :]
    cells, tail = _cells(row)
    new, new_tail = _cells(text)
    if col > len(cells):
        cells.extend(" " * (col - len(cells)))
    # the cells written over lose their colour escapes: a redraw brings its own (a terminal, too, draws
    # new text in the writer's colour, not the old cell's)
    return "".join(cells[:col] + new) + new_tail + "".join(cells[col + len(new) :]) + tail


def _erase(row: str, col: int, mode: str) -> str:
    if mode == "2":
        return ""
    if "\x1b" not in row:
        if mode == "1":
            return " " * min(col + 1, len(row)) + row[col + 1 :]
        return row[:col]
    cells, tail = _cells(row)
    if mode == "1":
        return " " * min(col + 1, len(cells)) + "".join(cells[col + 1 :]) + tail
    gone = "".join(cells[col:]) + tail
    return "".join(cells[:col]) + (_RESET if "\x1b" in gone else "")  # a colour switched on stays off


class Screen:
    """The rows a script's output may still change, and the lines it finished.

    ``rows`` is the window (top to bottom; the cursor is at ``row``, ``col``); ``height`` how many rows it keeps
    (1 until the script moves the cursor up). Finished lines go to ``committed`` for the caller to show: of
    more than ``keep`` between two takes, the first and the last are kept (``gap`` says where the others
    were), and a traceback whole; ``count`` counts them all.
    """

    def __init__(self, keep: int = 1000) -> None:
        self.rows: list[str] = [""]
        self.row = 0
        self.col = 0
        self.height = 1
        self.committed = _Kept(keep)
        self.count = 0  # lines committed since the caller last took them
        self.gap = 0  # where in the lines ``take`` gave the ones it did not keep were (between head and tail)
        self.dirty = False  # the window changed since the caller last looked
        self._at_end = True  # the cursor is at the end of the last row: plain text just appends
        self._carry = ""  # the start of an escape sequence the last piece ended in (a pipe splits anywhere)
        self._held = False  # take() kept the last committed line back once
        self._drawn_below = False  # the last row, begun by a newline, is drawn with \r or escapes

    @property
    def holding(self) -> bool:
        """Whether :meth:`take` kept a line back: the row below it may be about to become part of a window."""
        return self._held

    @property
    def redrawn(self) -> bool:
        """Whether the script redraws a row in place (``\\r``, escapes: a progress bar), not only appends lines."""
        return self._drawn_below or self.height > 1

    @property
    def multi(self) -> bool:
        """Whether the script redraws more than its last row (nested progress bars)."""
        return self.height > 1

    def take(self, *, final: bool = False) -> tuple[list[str], int]:
        """The committed lines kept since the last call and how many there were in all.

        The line just above a last row that is being drawn with control characters (``\\r``, escapes) stays
        back once (unless ``final``): the script may be about to move up into it (tqdm writes a nested bar
        as ``\\n``, ``\\r``, the bar, ``ESC[A``, and a pipe may deliver those in two reads), and a line
        shown as finished can no longer become a redrawn row.
        """
        hold = not final and not self._held and self._drawn_below and bool(self.committed)
        lines, count = list(self.committed), self.count
        self.gap = len(self.committed.head)
        self.committed.clear()
        self.count = 0
        self._held = False
        if hold:
            self.committed.append(lines.pop())
            self.count = 1
            count -= 1
            self._held = True
        return lines, count

    def _commit(self, line: str) -> None:
        self.committed.append(line)
        self.count += 1

    def _newline(self) -> None:
        self._drawn_below = False
        if self.row < len(self.rows) - 1:  # below is a row of the window: go there
            self.row += 1
        else:
            self.rows.append("")
            self.row += 1
            while len(self.rows) > self.height:
                self._commit(self.rows.pop(0))
                self.row -= 1
        self.col = 0

    def _up(self, n: int) -> None:
        want = self.row - n
        while want < 0 and self.committed and len(self.rows) < MAX_WINDOW:
            # the rows just scrolled out, not shown yet: the script is drawing above its last line
            self.rows.insert(0, self.committed.pop())
            self.count -= 1
            self.row += 1
            want += 1
        self.row = max(0, want)
        self.height = min(MAX_WINDOW, max(self.height, len(self.rows) - self.row))

    def feed(self, text: str) -> None:
        """Take output as the script wrote it, in pieces cut anywhere (also inside an escape sequence)."""
        if self._carry:
            text, self._carry = self._carry + text, ""
        esc = text.rfind("\x1b", max(0, len(text) - _CARRY_MAX))
        if esc >= 0 and not _COMPLETE.match(text, esc):
            text, self._carry = text[:esc], text[esc:]
        if not text:
            return
        self.dirty = True
        if self._at_end and "\x1b" not in text and "\r" not in text and "\b" not in text:
            pieces = text.split("\n")
            rows = self.rows
            rows[-1] += pieces[0]
            if len(pieces) > 1:
                if self.height == 1:
                    self._commit(rows[-1])
                    self.committed.extend(pieces[1:-1], traceback=TRACEBACK in text)
                    self.count += len(pieces) - 2
                    rows[-1] = pieces[-1]
                else:
                    for piece in pieces[1:]:
                        self._newline()
                        self.rows[-1] = piece
            self.col = visible_len(self.rows[-1]) if "\x1b" in self.rows[-1] else len(self.rows[-1])
            return
        for m in _TOKEN.finditer(text):
            if m.group("text") is not None:
                piece = m.group("text")
                self.rows[self.row] = _overlay(self.rows[self.row], self.col, piece)
                self.col += visible_len(piece)
            elif m.group("ctl") is not None:
                ctl = m.group("ctl")
                if ctl == "\n":
                    self._newline()
                elif ctl == "\r":
                    self.col = 0
                    self._drawn_below = True
                else:
                    self.col = max(0, self.col - 1)
            elif m.group("cmd") is not None:
                self._drawn_below = True
                self._control(m.group("cmd"), m.group("args") or "")
        self._at_end = self.row == len(self.rows) - 1 and self.col == visible_len(self.rows[-1])

    def _control(self, cmd: str, args: str) -> None:
        if args.startswith("?"):  # private modes (hide the cursor, ...): nothing to draw
            return
        first = args.split(";")[0]
        n = int(first) if first.isdigit() else 0
        if cmd == "A":
            self._up(max(1, n))
        elif cmd == "B":
            self.row = min(len(self.rows) - 1, self.row + max(1, n))
        elif cmd == "C":
            self.col += max(1, n)
        elif cmd == "D":
            self.col = max(0, self.col - max(1, n))
        elif cmd == "G":
            self.col = max(0, n - 1)
        elif cmd == "K":
            self.rows[self.row] = _erase(self.rows[self.row], self.col, first or "0")
        elif cmd == "J":
            self.rows[self.row] = _erase(self.rows[self.row], self.col, "0")
            del self.rows[self.row + 1 :]
        elif cmd == "m":  # a colour on its own (the text pattern takes those inside text)
            self.rows[self.row] = _overlay(self.rows[self.row], self.col, f"\x1b[{args}m")
