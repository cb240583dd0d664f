"""The run's supervisor: a tiny process between ``run()`` and the script that outlives the launcher and ends the whole run.

``run()`` starts it as ``python -I -S .../colabkit/_supervisor.py CONFIG -- COMMAND...`` (standard library only,
never importing colabkit, so it starts in milliseconds under any interpreter and survives whatever the script
does to itself: ``os.execv``, a blocked GIL, a ``BrokenPipeError``). It:

- makes itself a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``, allowed unprivileged, also in Colab's
  container where cgroups are not writable), so every process the script leaves behind (a double-fork +
  ``setsid`` daemon, a ``start_new_session=True`` helper started just before the script exits) is
  reparented to it: the run's processes are exactly its descendants, read from ``/proc`` when they are
  signalled, with no walk that could miss one started in between;
- starts the script in a process group of its own with SIGINT, SIGTERM, SIGQUIT, SIGPIPE and SIGXFSZ at
  their default handling and no blocked signals, whatever it inherited (``nohup``, a background job);
- reports on the events pipe: ``started PID``, ``failed ERRNO TEXT``, ``exited RETURNCODE`` (negative: the
  signal that ended it), and stays until every descendant is gone, reaping them;
- holds a lifeline: its stdin is a pipe whose other end only the launcher holds. The launcher writes
  ``stop STEP SECONDS REASON`` when it begins a step of the stop sequence, and this process sends that
  step's signal to every process of the run (it is the one sender while it lives). At EOF (the launcher was
  SIGKILLed, the kernel restarted) it continues the run's stop sequence, or starts it (SIGINT, or SIGTERM
  with the budget's grace), keeps the script's output pipe drained into ``output.log`` so the script never
  dies of a broken pipe before its save (the run's secrets masked there too: ``mask`` in the config names
  them, their values are in this process's environment), and records how the run ended beside ``summary.json``;
- exits with the script's status (128 + N when signal N ended it).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import secrets
import select
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
STEPS = {"int": signal.SIGINT, "term": signal.SIGTERM, "kill": signal.SIGKILL}
NEXT = {"int": "term", "term": "kill"}
RESET = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGPIPE, signal.SIGXFSZ)
_TICK_S = 0.05  # how often a stop sequence looks again
_DRAIN_S = 1.0  # after the last process: how long leftover output may still arrive


_MARK = re.compile(rb"\[(?:rank|default)(\d+)\]:")  # torchrun's mark on each piece of a rank's output
_PARTIAL = re.compile(rb"\[(?:r(?:a(?:n(?:k\d*(?:\])?)?)?)?|d(?:e(?:f(?:a(?:u(?:l(?:t\d*(?:\])?)?)?)?)?)?)?)?")


class _Mask:
    """The run's secret values, read from this process's environment by the names the launcher gave (never on
    the command line), replaced by ``***`` in the output kept once orphaned, also a value split across two
    reads or (torchrun) by another rank's marked output: each rank's stream is masked apart. The same rule
    as colabkit's ``_secrets.Masker`` and ``_ranks.RankMasker`` (this file imports nothing of colabkit)."""

    def __init__(self, names: list[str]) -> None:
        values = sorted({os.environ[n].encode() for n in names if os.environ.get(n)}, key=len, reverse=True)
        self.rx = re.compile(b"|".join(re.escape(v) for v in values)) if values else None
        self.prefixes = {v[:i] for v in values for i in range(1, len(v))}
        self.longest = max((len(v) for v in values), default=0)
        self.held: dict[int, bytes] = {}
        self.current = -1  # torchrun's own output (or the script's, without torchrun)
        self.pending = b""

    def _one(self, key: int, data: bytes) -> bytes:
        assert self.rx is not None
        data = self.rx.sub(b"***", self.held.get(key, b"") + data)
        keep = next((n for n in range(min(len(data), self.longest - 1), 0, -1) if data[-n:] in self.prefixes), 0)
        self.held[key] = data[len(data) - keep :]
        return data[: len(data) - keep]

    def feed(self, data: bytes) -> bytes:
        if self.rx is None:
            return data
        data = self.pending + data
        cut = next((i for i in range(max(0, len(data) - 16), len(data)) if _PARTIAL.fullmatch(data, i)), len(data))
        data, self.pending = data[:cut], data[cut:]
        out, pos = [], 0
        for mark in _MARK.finditer(data):
            out += [self._one(self.current, data[pos : mark.start()]), mark.group(0)]
            self.current, pos = int(mark.group(1)), mark.end()
        out.append(self._one(self.current, data[pos:]))
        return b"".join(out)

    def flush(self) -> bytes:
        if self.rx is None:
            return b""
        out = [self._one(self.current, self.pending)]
        self.pending = b""
        for key, held in sorted(self.held.items()):
            if held:
                out.append((b"" if key < 0 else b"[rank%d]:" % key) + held)
        self.held.clear()
        return b"".join(out)


def _set_subreaper() -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError, ImportError):  # not Linux
        return False


def _procs() -> dict[int, tuple[int, int]]:
    """pid -> (parent, process group) of every live process (zombies left out)."""
    found = {}
    try:
        names = os.listdir("/proc")
    except OSError:  # no /proc (not Linux): only the script's group can be reached
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                raw = fh.read()
            fields = raw[raw.rfind(b")") + 2 :].split()
            if fields[0] not in (b"Z", b"X"):
                found[int(name)] = (int(fields[1]), int(fields[2]))
        except (OSError, IndexError, ValueError):
            continue
    return found


def descendants(root: int) -> dict[int, int]:
    """Live descendants of ``root``: pid -> process group."""
    procs = _procs()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    out: dict[int, int] = {}
    todo = [root]
    while todo:
        for kid in kids.get(todo.pop(), ()):
            if kid not in out:
                out[kid] = procs[kid][1]
                todo.append(kid)
    return out


def signal_run(group: int, sig: int, *, spare_group: bool = False) -> bool:
    """``sig`` to the script's group and to every other descendant, each once; whether any was left.

    The group is signalled as one (``killpg``: atomic for its members) only while one of them is still a
    descendant: an emptied group's number may belong to someone else's process by now. With ``spare_group``
    (torchrun: its group is the agent alone, each rank has a session of its own) SIGINT and SIGTERM reach the
    ranks only: the agent, signalled, would SIGTERM them at once (cutting their save short) and exit 1 even
    when they saved and exited 0; it ends by itself when they have, and SIGKILL reaches it too.
    """
    left = descendants(os.getpid())
    if any(pgid == group for pgid in left.values()) and not (spare_group and sig != signal.SIGKILL):
        with contextlib.suppress(OSError):
            os.killpg(group, sig)
    for pid, pgid in left.items():
        if pgid != group:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
    return bool(left)


class Supervisor:
    """One run's supervisor: the script, its descendants, the lifeline and, once orphaned, the run's end."""

    def __init__(self, config: dict, command: list[str]) -> None:
        self.cfg = config
        self.command = command
        self.events = int(config["events_fd"])
        self.output = int(config["output_fd"])
        self.pid = 0  # the script's pid, also its process group
        self.started = 0.0
        self.returncode: int | None = None
        self.children = True
        self.lifeline = True
        self.step: str | None = None  # the stop sequence's step, as the launcher (or this process) began it
        self.deadline = 0.0
        self.reason: str | None = None
        self.killing_since: float | None = None
        self.orphaned = False  # the launcher is gone: this process ends the run and keeps its log
        self.asked: int | None = None  # a signal sent to this process itself
        self.log: int | None = None
        self.buffer = b""
        self.mask = _Mask(list(config.get("mask", ())))
        self.spare = bool(config.get("spare_group"))  # torchrun: INT and TERM go to the ranks, not the agent

    # -- talking to the launcher ---------------------------------------------------------------------
    def send(self, line: str) -> None:
        if self.events < 0:
            return
        try:
            os.write(self.events, (line + "\n").encode("utf-8", "replace"))
        except OSError:  # the launcher is gone
            os.close(self.events)
            self.events = -1

    def read_lifeline(self) -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            self.lifeline = False
            self.orphan()
            return
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            parts = line.decode("ascii", "replace").split()
            if len(parts) == 4 and parts[0] == "stop" and parts[1] in STEPS:
                # the launcher's stop sequence began a step: this process sends its signal (the one sender,
                # so that a launcher dying mid-step leaves nothing unsignalled and nothing signalled twice)
                self.step, self.reason = parts[1], (None if parts[3] == "none" else parts[3])
                self.deadline = time.monotonic() + max(0.0, float(parts[2]))
                if self.step == "kill" and self.killing_since is None:
                    self.killing_since = time.monotonic()
                signal_run(self.pid, STEPS[self.step], spare_group=self.spare)

    # -- the launcher is gone ------------------------------------------------------------------------
    def orphan(self) -> None:
        """End the run from here on: continue the stop sequence the launcher began, or begin it."""
        if self.orphaned:
            return
        self.orphaned = True
        self.send("orphaned")
        with contextlib.suppress(OSError):
            self.log = os.open(self.cfg["log"], os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        who = f"the process that started the run (pid {self.cfg.get('launcher')}) is gone"
        if self.returncode is not None and not descendants(os.getpid()):
            self.note(f"{who}; the run was over")
            return
        if self.step is not None:
            left = max(0.0, self.deadline - time.monotonic())
            self.note(f"{who}: the stop sequence goes on from here ({self.step.upper()} already sent, next in {left:.1f}s)")
            return
        first = self.cfg.get("first", "int")
        self.reason = "launcher"
        self.begin(first)
        waits = self.cfg["waits"]
        if first == "int":
            plan = f"sent SIGINT; SIGTERM in {waits['int']:g}s, then SIGKILL {waits['term']:g}s later"
        else:
            plan = f"sent SIGTERM; SIGKILL in {waits['term']:g}s"
        self.note(f"{who}: {plan} unless the run's processes exit")

    def note(self, text: str) -> None:
        self.keep(f"\n[colabkit] {text}\n".encode())

    def keep(self, data: bytes) -> None:
        if self.log is None:
            return
        try:
            while data:
                data = data[os.write(self.log, data) :]
        except OSError:  # the run folder is gone as well: nothing to keep it in
            os.close(self.log)
            self.log = None

    def drain(self) -> bool:
        """Move what the script wrote to output.log (the pipe is readable); False at the pipe's end."""
        try:
            data = os.read(self.output, 65536)
        except OSError:
            data = b""
        if not data:
            return False
        self.keep(self.mask.feed(data))
        return True

    def begin(self, step: str) -> None:
        self.step = step
        waits = self.cfg["waits"]
        self.deadline = time.monotonic() + float(waits[step])
        if step == "kill" and self.killing_since is None:
            self.killing_since = time.monotonic()
        signal_run(self.pid, STEPS[step], spare_group=self.spare)

    def advance(self) -> None:
        """Move this process's own stop sequence on (only once the launcher is gone)."""
        if self.step is None:
            return
        now = time.monotonic()
        if self.step == "kill":
            signal_run(self.pid, signal.SIGKILL)  # idempotent: also reaches what was started meanwhile
            return
        if now >= self.deadline:
            self.begin(NEXT[self.step])

    # -- children ------------------------------------------------------------------------------------
    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children = False
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            if pid == self.pid and self.returncode is None:
                self.returncode = os.waitstatus_to_exitcode(status)
                self.send(f"exited {self.returncode}")

    def spawn(self) -> bool:
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            self.pid = os.posix_spawnp(
                self.command[0],
                self.command,
                dict(os.environ),
                file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0)],
                setpgroup=0,
                setsigmask=(),
                setsigdef=RESET,
            )
        except OSError as exc:
            self.send(f"failed {exc.errno or 0} {exc.strerror or exc}")
            return False
        finally:
            os.close(devnull)
        self.started = time.time()
        self.send(f"started {self.pid}")
        return True

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # ``nohup`` asked for SIGHUP to be ignored
                signal.signal(sig, self._asked)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        for fd in (self.events, self.output):
            os.set_inheritable(fd, False)  # the output pipe's reading end is shared with the launcher: never
            # make it non-blocking (that would change the launcher's end too); read it only when select says so
        ready, _, _ = select.select([0], [], [], 0)
        if ready:
            self.read_lifeline()
            if not self.lifeline:  # the launcher died before the script could start: start nothing
                return 0
        if not self.spawn():
            return 127
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)  # the script holds the output pipe now; its end must not wait for this process
        os.dup2(null, 2)
        os.close(null)
        draining = True
        quiet_since: float | None = None
        while True:
            self.reap()
            if self.asked is not None:
                # someone signalled this process (a container shutting down, ``kill``): with the launcher
                # there, it runs the stop sequence; without, this process does
                if self.orphaned or not self.lifeline:
                    pass
                elif self.events >= 0:
                    self.send(f"signal {self.asked}")
                else:
                    self.orphan()
                self.asked = None
            if self.orphaned:
                self.advance()
                if self.killing_since is not None and time.monotonic() - self.killing_since > float(self.cfg["waits"]["kill"]):
                    break  # processes that survive SIGKILL for that long are stuck in the kernel
            if not self.children:
                if not self.orphaned or not draining:
                    break
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= _DRAIN_S:
                    break
            watch = [wake_r]
            if self.lifeline:
                watch.append(0)
            if self.orphaned and draining:
                watch.append(self.output)
            timeout = _TICK_S if self.orphaned else 1.0
            try:
                ready, _, _ = select.select(watch, [], [], timeout)
            except InterruptedError:
                continue
            if wake_r in ready:
                with contextlib.suppress(OSError):
                    while os.read(wake_r, 512):
                        pass
            if 0 in ready:
                self.read_lifeline()
            if self.output in ready:
                while draining:
                    draining = self.drain()
                    if draining and not select.select([self.output], [], [], 0)[0]:
                        break
        if self.orphaned:
            self.finish()
        if self.returncode is None:
            return 1
        return self.returncode if self.returncode >= 0 else 128 - self.returncode

    def _asked(self, signum: int, frame: object) -> None:
        self.asked = signum

    def finish(self) -> None:
        """The launcher is gone and so is the run: say how it ended in output.log and beside summary.json."""
        rc = self.returncode
        reason = self.reason
        if reason == "budget":
            status = "stopped"
        elif reason is not None:
            status = "interrupted"
        else:
            status = "finished" if rc == 0 else "failed"
        duration = time.time() - self.started if self.started else 0.0
        if rc is None:
            ending = "no exit status"
        elif rc < 0:
            ending = f"signal {signal.Signals(-rc).name}" if -rc in signal.valid_signals() else f"signal {-rc}"
        else:
            ending = f"exit status {rc}"
        self.keep(self.mask.flush())
        self.note(f"run {status} ({reason or 'by itself'}) after {duration:.1f}s: {ending}")
        if self.log is not None:
            with contextlib.suppress(OSError):
                os.close(self.log)
        record = {
            "status": status,
            "reason": reason,
            "returncode": rc,
            "ended": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "duration_s": round(duration, 3),
            "by": "supervisor",
        }
        kept = {"run_dir": self.cfg.get("run_dir"), "changes": record}
        for path in (self.cfg.get("ending"), self.cfg.get("pending")):
            if path and _write_json(path, kept, self.cfg.get("machine", "host")):
                return


def _write_json(path: str, data: dict, machine: str) -> bool:
    """Write ``path`` atomically (a temp sibling named as colabkit's atomic writes name theirs); False if it cannot."""
    folder, name = os.path.split(path)
    temp = os.path.join(folder, f".{name}.tmp-{machine}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(temp, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        return False


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: _supervisor.py CONFIG -- COMMAND [ARGS...]\n")
        return 2
    config = json.loads(argv[1])
    sup = Supervisor(config, argv[3:])
    if not _set_subreaper():
        sup.send("note no child subreaper here: processes that leave the script's tree may outlive the run")
    return sup.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
