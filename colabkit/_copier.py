"""One copy pass of a run folder from the VM's disk to Drive, in a process of its own (standard library only).

``_mirror`` starts ``python -I -S .../_copier.py SRC DST MACHINE`` every few seconds and kills it past a
deadline: a request to a hung Drive blocks with no timeout, and only a process can be ended (colab-facts §7).
One pass:

- copies every file of ``SRC`` (sub-folders too; hidden files only ``.ending.json``) whose size or time
  differs at ``DST``: the files that only grow (``output.log``, ``metrics.csv``, ``steps.csv``) by appending
  what is new, the others through a hidden temp sibling renamed into place, so Drive never holds half a file;
- checks each file's size at ``DST`` after its write: "copied" means the sizes match;
- writes ``DST/summary.json`` last: ``SRC``'s summary plus ``"copy"``, how far the copy got (bytes of bytes,
  files behind, when), so whoever reads the Drive folder knows what it holds;
- prints one JSON line: ``{"bytes": N, "of": M, "behind": [...], "errno": E, "error": TEXT}`` and exits 0,
  or with status 3 when a write failed (``errno`` says why: 107 for a Drive whose client died).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import secrets
import stat
import sys

TYPE_CHECKING = False  # typing is not imported at run time: this process starts every few seconds
if TYPE_CHECKING:
    from typing import BinaryIO

GROWING = frozenset({"output.log", "metrics.csv", "steps.csv"})  # only ever appended to by the run
KEEP_HIDDEN = frozenset({".ending.json"})  # the supervisor's ending: runs() applies it to the summary
SUMMARY = "summary.json"
_CHUNK = 1024**2


def _files(src: str) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of the files to copy."""
    out: dict[str, tuple[int, int]] = {}
    for folder, dirs, names in os.walk(src):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if name.startswith(".") and name not in KEEP_HIDDEN:
                continue
            path = os.path.join(folder, name)
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                continue  # vanished meanwhile
            if stat.S_ISREG(st.st_mode):
                out[os.path.relpath(path, src)] = (st.st_size, st.st_mtime_ns)
    return out


def _temp(path: str, machine: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp-{machine}-{os.getpid()}-{secrets.token_hex(4)}")


def _remote(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def _pump(fin: BinaryIO, fout: BinaryIO, left: int) -> None:
    """Copy at most ``left`` bytes from ``fin`` to ``fout`` in chunks (less if ``fin`` ends first)."""
    while left > 0:
        data = fin.read(min(_CHUNK, left))
        if not data:
            break
        fout.write(data)
        left -= len(data)


def _append(src: str, dst: str, start: int, end: int) -> None:
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        fin.seek(start)
        fout.seek(start)
        _pump(fin, fout, end - start)


def _replace(src: str, dst: str, size: int, machine: str) -> None:
    temp = _temp(dst, machine)
    try:
        with open(src, "rb") as fin, open(temp, "wb") as fout:
            _pump(fin, fout, size)
        os.replace(temp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _copy_one(src: str, dst: str, size: int, mtime_ns: int, name: str, machine: str) -> int:
    """Copy one file if it differs; the size it has at ``dst`` afterwards."""
    there = _remote(dst)
    growing = os.path.basename(name) in GROWING
    if there is not None and there[0] == size and (growing or there[1] == mtime_ns):
        return size
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if growing and there is not None and 0 < there[0] < size:
        _append(src, dst, there[0], size)
    else:
        _replace(src, dst, size, machine)
    with contextlib.suppress(OSError):
        os.utime(
            dst, ns=(mtime_ns, mtime_ns)
        )  # the next pass compares times: the copy carries the original's
    return os.stat(dst).st_size


def _summary(src: str, dst: str, state: dict, machine: str) -> None:
    try:
        with open(os.path.join(src, SUMMARY), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return
    if not isinstance(data, dict):
        return
    data["copy"] = state
    temp = _temp(os.path.join(dst, SUMMARY), machine)
    try:
        with open(temp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
        os.replace(temp, os.path.join(dst, SUMMARY))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _clear_own_temps(dst: str, machine: str) -> None:
    """Temp files an earlier pass of this machine left when it was killed (its pid is gone)."""
    marker = f".tmp-{machine}-"
    try:
        names = os.listdir(dst)
    except OSError:
        return
    for name in names:
        if not name.startswith(".") or marker not in name:
            continue
        pid = name.rsplit(marker, 1)[1].split("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(dst, name))


def copy_pass(src: str, dst: str, machine: str) -> dict:
    """Copy what changed from ``src`` to ``dst``; the report printed by :func:`main`."""
    files = _files(src)
    report: dict = {"bytes": 0, "of": 0, "behind": [], "errno": None, "error": None}
    try:
        if not os.path.isdir(dst):  # the run folder only: a runs folder gone means Drive is not mounted there
            os.mkdir(dst)
        _clear_own_temps(dst, machine)
        done = 0
        behind = []
        for rel, (size, mtime_ns) in sorted(files.items()):
            if rel == SUMMARY:
                continue
            got = _copy_one(os.path.join(src, rel), os.path.join(dst, rel), size, mtime_ns, rel, machine)
            done += min(got, size)
            if got != size:
                behind.append(rel)
        total = sum(size for rel, (size, _) in files.items() if rel != SUMMARY)
        stamp = (
            datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        )
        state = {
            "state": "complete" if not behind else "behind",
            "bytes": done,
            "of": total,
            "behind": behind,
            "at": stamp,
            "local_dir": os.path.abspath(src),
        }
        if SUMMARY in files:
            _summary(src, dst, state, machine)
        report.update(bytes=done, of=total, behind=behind)
    except OSError as exc:
        report.update(errno=exc.errno or errno.EIO, error=f"{exc.strerror or exc}: {exc.filename or dst}")
    return report


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        sys.stderr.write("usage: _copier.py SRC DST MACHINE\n")
        return 2
    report = copy_pass(argv[1], argv[2], argv[3])
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 3 if report["errno"] is not None else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
