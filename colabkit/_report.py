"""``info()`` and ``doctor()``: one report of the environment, and checks that each name their fix."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from . import _format, _gpu, _mounts, _procs, _runtime, _torch
from ._display import html_cell
from ._format import format_gib
from ._version import __version__
from .errors import ColabkitError

__all__ = ["Check", "Doctor", "Info", "doctor", "info"]

GIB = 1024**3
_DISK_FAIL_BYTES = 1 * GIB
_DISK_WARN_BYTES = 5 * GIB
_VM_WARN_LEFT_S = 3600.0
_DRIVE_PROBE_TIMEOUT_S = 5.0  # the test write, after the mount answered a bounded probe
_TORCH_TIMEOUT_S = 60.0
# the OAuth client id of the Google Cloud SDK, which the old ocamlfuse recipe borrowed through oauth2client
_BORROWED_CLIENT_ID = "32555940559.apps.googleusercontent.com"

_MOUNT_FIX = "mount it: colabkit.mount() in a notebook, `colabkit mount` in a terminal"
_REMOUNT = "colabkit.mount(force=True) (`colabkit mount --force` in a terminal)"
_OOB_STORY = (
    "The old recipe (apt PPA alessandro-strada with python-software-properties, Colab's OAuth client id "
    "borrowed through oauth2client, then a pasted verification code) stopped working in 2022, when Google "
    'blocked the out-of-band OAuth flow ("Error 401: invalid_client", "The out-of-band (OOB) flow has '
    'been blocked").'
)


def _sys_path(rel: str) -> Path:
    return _runtime.sysroot() / rel.lstrip("/")


def _local_disk() -> Path:
    """The VM's local disk: ``/content`` on Colab, else the home folder."""
    content = _sys_path("/content")
    return content if content.is_dir() else Path.home()


def _drive_status() -> Any:
    """``_drive.status()``: the mount and whether it answers, asked with a deadline (a hung DriveFS blocks
    ``statvfs`` forever)."""
    from . import _drive

    return _drive.status()


def _describe_mount(mount: Any) -> str:
    mode = "read-only" if getattr(mount, "readonly", False) else "read-write"
    if mount.method == "local":  # a plain folder: nothing is mounted
        return f"local folder {mount.root} (stand-in for Drive, {mode})"
    return f"{mount.root} ({mount.method}, {mode}, mounted at {mount.mountpoint})"


def _describe_status(st: Any) -> str | None:
    """The drive row of info(): the live mount, a broken one with its state, or None when nothing is mounted."""
    if st is None or st.mount is None:
        return None
    where = _describe_mount(st.mount)
    if st.state == "live":
        return where
    said = {"dead": "DEAD ([Errno 107] Transport endpoint is not connected)", "hung": f"HUNG (no answer within "
            f"{_mounts.PROBE_TIMEOUT_S:g} s)"}.get(st.state, f"ERROR ([Errno {st.errno}])" if st.errno else "ERROR")
    return f"{where}: {said}; remount with {_REMOUNT}"


# --- info ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Info:
    """The environment in one report; sizes in bytes, times in seconds, ``None`` when unknown.

    ``repr()`` is the plain-text report; notebooks show ``_repr_html_()``.
    """

    runtime: str
    python: str
    gpus: tuple[_gpu.GpuInfo, ...] = ()
    gpu_problem: str | None = None  # why there is no GPU list: no driver, NVML failed
    ram_total: int | None = None
    ram_available: int | None = None
    disk_path: str | None = None
    disk_free: int | None = None
    disk_total: int | None = None
    drive: str | None = None  # the mount (said DEAD or HUNG when it does not answer), None when not mounted
    torch: str | None = None  # None when torch is not installed
    cuda_driver: str | None = None
    uptime_s: float | None = None
    vm_limit_s: float | None = None
    problems: tuple[str, ...] = ()  # parts of the report that could not be read

    def rows(self) -> list[tuple[str, str]]:
        """(label, text) pairs, the one source of the text and HTML renderings."""
        rows = [("runtime", self.runtime), ("python", self.python)]
        if self.gpus:
            rows += [(f"gpu {g.index}", g.describe().split(": ", 1)[1]) for g in self.gpus]
        else:
            rows.append(("gpu", f"none: {self.gpu_problem}" if self.gpu_problem else "none"))
        rows.append(("ram", f"{format_gib(self.ram_available)} available of {format_gib(self.ram_total)}"))
        rows.append(
            (
                "disk",
                f"{format_gib(self.disk_free)} free of {format_gib(self.disk_total)} at {self.disk_path or 'n/a'}",
            )
        )
        rows.append(("drive", self.drive or "not mounted"))
        rows.append(("torch", self.torch or "not installed"))
        rows.append(("cuda", f"driver supports CUDA {self.cuda_driver}" if self.cuda_driver else "n/a"))
        if self.uptime_s is None:
            rows.append(("uptime", "n/a"))
        elif self.vm_limit_s is not None:
            left = max(0.0, self.vm_limit_s - self.uptime_s)
            rows.append(
                (
                    "uptime",
                    f"{_format.format_duration(self.uptime_s)} of ~{_format.format_duration(self.vm_limit_s)} "
                    f"(about {_format.format_duration(left)} left)",
                )
            )
        else:
            rows.append(("uptime", _format.format_duration(self.uptime_s)))
        rows += [("problem", p) for p in self.problems]
        return rows

    def __str__(self) -> str:
        lines = [f"colabkit {__version__} info"]
        lines += [f"  {label:<8} {text}" for label, text in self.rows()]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        body = "".join(f"<tr>{html_cell(escape(k), 'th')}{html_cell(escape(v))}</tr>" for k, v in self.rows())
        return f"<table><caption style='text-align:left'>colabkit {escape(__version__)} info</caption>{body}</table>"


def _try(problems: list[str], what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # a report goes on with what it can read
        problems.append(f"{what}: {type(exc).__name__}: {exc}")
        return None


def info() -> Info:
    """Report the runtime, Python, each GPU, RAM, local disk, Drive, torch and the VM's uptime.

    Never raises: a part that cannot be read is shown as ``n/a`` and named under ``problem``.
    The torch versions are read in a short child process (no CUDA context in this one).

    Returns:
        An ``Info`` that prints as plain text and renders as a table in a notebook.

    Examples:
        >>> colabkit.info()
        colabkit 0.1.0 info
          runtime  Colab (release-colab_20250101-060000_RC00)
          python   3.11.13 (/usr/bin/python3)
          gpu 0    Tesla T4, 15.0 GiB (0.0 GiB used), driver 550.54.15, CUDA 12.4, sm 7.5
          ...
          uptime   41m02s of ~12h00m (about 11h18m left)
    """
    problems: list[str] = []
    rt = _try(problems, "runtime", _runtime.detect_runtime)
    gpus: list[_gpu.GpuInfo] = []
    gpu_problem = None
    try:
        gpus = _gpu.gpus()
        if not gpus:
            _gpu.require_gpu()
    except ColabkitError as exc:
        gpu_problem = exc.message
    except Exception as exc:
        gpu_problem = f"{type(exc).__name__}: {exc}"
    ram = _try(problems, "ram", _procs.host_memory)
    disk_path = _local_disk()
    disk = _try(problems, "disk", lambda: shutil.disk_usage(disk_path))
    drive = _try(problems, "drive", _drive_status)
    broken = _mounts.cwd_problem()
    if broken is None:
        torch = _try(problems, "torch", lambda: _torch.torch_status(timeout=_TORCH_TIMEOUT_S))
    else:  # its child would start in that folder and hang (or fail) on its first import
        torch = None
        problems.append(f"torch: not checked: {broken}")
    return Info(
        # the uptime has its own row: not twice
        runtime=dataclasses.replace(rt, uptime_s=None).describe() if rt is not None else "n/a",
        python=f"{platform.python_version()} ({sys.executable})",
        gpus=tuple(gpus),
        gpu_problem=gpu_problem,
        ram_total=ram.total if ram is not None else None,
        ram_available=ram.available if ram is not None else None,
        disk_path=str(disk_path),
        disk_free=disk.free if disk is not None else None,
        disk_total=disk.total if disk is not None else None,
        drive=_describe_status(drive),
        torch=torch.describe() if torch is not None else None,
        cuda_driver=next((g.cuda_driver_version for g in gpus if g.cuda_driver_version), None),
        uptime_s=rt.uptime_s if rt is not None else None,
        vm_limit_s=rt.vm_limit_s if rt is not None else None,
        problems=tuple(problems),
    )


# --- doctor --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One verdict: ``status`` is ``"ok"``, ``"warn"`` or ``"fail"``; ``fix`` says what to do (None when ok)."""

    name: str
    status: str
    detail: str
    fix: str | None = None

    def __repr__(self) -> str:
        fix = f", fix={self.fix!r}" if self.fix else ""
        return f"Check({self.name!r}, {self.status!r}, {self.detail!r}{fix})"

    def _repr_html_(self) -> str:
        return Doctor((self,))._repr_html_()


_LABEL = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}
_COLOUR = {"ok": "#1e8e3e", "warn": "#b06000", "fail": "#d93025"}


@dataclass(frozen=True)
class Doctor:
    """The checks ``doctor()`` ran; ``ok`` is False when any check failed."""

    checks: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "fail")

    @property
    def warnings(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "warn")

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        counts = {s: sum(c.status == s for c in self.checks) for s in ("ok", "warn", "fail")}
        return f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail"

    def __getitem__(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def __str__(self) -> str:
        lines = [f"colabkit doctor: {self.summary()}"]
        for c in self.checks:
            lines.append(f"  {_LABEL.get(c.status, c.status):<4}  {c.name:<18} {c.detail}")
            if c.fix:
                lines.append(f"        HINT: {c.fix}")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        rows = []
        for c in self.checks:
            colour = _COLOUR.get(c.status, "inherit")
            fix = f"<div style='max-width:90ch'><i>HINT:</i> {escape(c.fix)}</div>" if c.fix else ""
            label = html_cell(escape(_LABEL.get(c.status, c.status)), style=f"color:{colour};font-weight:bold")
            rows.append(f"<tr>{label}{html_cell(escape(c.name), 'th')}{html_cell(escape(c.detail) + fix)}</tr>")
        return f"<table><caption style='text-align:left'>colabkit doctor: {escape(self.summary())}</caption>{''.join(rows)}</table>"


class _Context:
    """What several checks share, read once."""

    def __init__(self) -> None:
        self.runtime = _runtime.detect_runtime()
        self.gpus: list[_gpu.GpuInfo] = []
        self.gpu_error: ColabkitError | None = None
        self.broken_cwd = _mounts.cwd_problem()


def _check_gpu(ctx: _Context) -> Check:
    try:
        ctx.gpus = _gpu.gpus()
        chosen = _gpu.require_gpu()
    except ColabkitError as exc:
        ctx.gpu_error = exc
        return Check("gpu", "fail", exc.message, exc.hint)
    more = f" (+{len(ctx.gpus) - 1} more)" if len(ctx.gpus) > 1 else ""
    return Check("gpu", "ok", chosen.describe().split(": ", 1)[1] + more)


def _check_torch(ctx: _Context) -> Check:
    if ctx.broken_cwd is not None:
        return Check(
            "torch",
            "warn",
            f"not checked: {ctx.broken_cwd}, and the check's child process would start there",
            f"fix the drive check first (remount with {_REMOUNT}), or change to a folder on the local disk "
            f"({'/content' if ctx.runtime.is_colab else '~'}) and run doctor again",
        )
    if not ctx.gpus:
        status = _torch.torch_status(timeout=_TORCH_TIMEOUT_S)
        if status is None:
            return Check("torch", "ok", "not installed (nothing to check)")
        return Check(
            "torch", "warn", status.describe(), "the gpu check above says how to get a GPU; then run doctor again"
        )
    try:
        status = _gpu.verify_torch(ctx.gpus[0], timeout=_TORCH_TIMEOUT_S)
    except ColabkitError as exc:
        return Check("torch", "fail", exc.message, exc.hint)
    if status is None:
        return Check("torch", "ok", "not installed (nothing to check)")
    if status.version is None:
        return Check("torch", "warn", status.describe(), "run `python3 -c 'import torch'` to see the error")
    return Check("torch", "ok", status.describe())


def _write_probe(root: Path) -> None:
    # inside .colabkit/ rather than the My Drive root: a deleted file on Drive lands in the trash, which
    # counts against the quota for 30 days, so the probe file is kept and rewritten instead of removed
    folder = root / ".colabkit"
    folder.mkdir(exist_ok=True)
    probe = folder / "doctor-write-test"
    text = f"colabkit doctor write test {os.getpid()}\n"
    probe.write_text(text)
    if probe.read_text() != text:
        raise OSError(f"read back different content from {probe}")


def _check_drive(ctx: _Context) -> Check:
    st = _drive_status()
    mount = st.mount if st is not None else None
    if mount is None and ctx.runtime.is_kaggle:
        return Check("drive", "ok", "not used on Kaggle: the notebook's files are in /kaggle/working")
    if mount is None:
        return Check("drive", "warn", "Drive is not mounted", _MOUNT_FIX)
    where = _describe_mount(mount)
    broken = {  # state -> (what, fix)
        "dead": (
            "dead ([Errno 107] Transport endpoint is not connected: the Drive client died)",
            f"remount with {_REMOUNT}; files written before it died may still be in the client's cache",
        ),
        "hung": (
            f"hung (the Drive client did not answer within {_mounts.PROBE_TIMEOUT_S:g} s)",
            f"wait a minute and run doctor again; if it stays hung, restart it with {_REMOUNT} "
            "(writes it has not uploaded yet may be lost)",
        ),
    }
    if st.state != "live":
        said = f"answers with an error{f' ([Errno {st.errno}])' if st.errno else ''}"
        what, fix = broken.get(st.state, (said, f"remount with {_REMOUNT}"))
        return Check("drive", "fail", f"{where}: {what}", fix)
    if getattr(mount, "readonly", False):
        return Check(
            "drive",
            "warn",
            f"{where}: read-only, runs cannot save logs or checkpoints there",
            f"remount read-write: {_REMOUNT}",
        )
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            _write_probe(Path(mount.root))
            outcome.append(None)
        except BaseException as exc:  # reported below
            outcome.append(exc)

    # the mount answered statvfs just now; a write can still hang (a quota, a stuck upload): a thread with a
    # deadline, which a hung write leaves blocked (it is a daemon and ends when the client answers)
    worker = threading.Thread(target=probe, name="colabkit-doctor-drive", daemon=True)
    worker.start()
    worker.join(_DRIVE_PROBE_TIMEOUT_S)
    if not outcome:
        return Check(
            "drive",
            "fail",
            f"{where}: a test write did not finish within {_DRIVE_PROBE_TIMEOUT_S:g} s",
            f"the mount hangs: remount with {_REMOUNT}",
        )
    if outcome[0] is not None:
        exc = outcome[0]
        return Check(
            "drive",
            "fail",
            f"{where}: cannot write: {exc}",
            f"the mount is broken or full: remount with {_REMOUNT}, and check the Drive quota",
        )
    return Check("drive", "ok", f"{where}, writable")


def _check_disk(ctx: _Context) -> Check:
    path = _local_disk()
    usage = shutil.disk_usage(path)
    detail = f"{format_gib(usage.free)} free of {format_gib(usage.total)} at {path}"
    fix = (
        "free space: remove data you no longer need and pip/model caches "
        "(`du -sh ~/.cache/* | sort -h`, then `rm -rf` what you can rebuild)"
    )
    if usage.free < _DISK_FAIL_BYTES:
        return Check("disk", "fail", detail, fix)
    if usage.free < _DISK_WARN_BYTES:
        return Check("disk", "warn", detail, fix)
    return Check("disk", "ok", detail)


def _check_gpu_processes(ctx: _Context) -> Check:
    if not ctx.gpus:
        return Check("gpu processes", "ok", "no GPU (nothing to check)")
    procs = _gpu.gpu_processes()
    if not procs:
        return Check("gpu processes", "ok", "no process holds GPU memory")
    me = os.getpid()
    parts = []
    for p in procs:
        who = "this process" if p.pid == me else (p.command or "command not visible here")
        parts.append(f"pid {p.pid} on gpu {p.gpu_index} holds {format_gib(p.used_bytes)}: {who}")
    return Check(
        "gpu processes",
        "warn",
        "; ".join(parts),
        "if one is a leftover of an earlier run, stop it: `kill PID` (never the notebook kernel itself); "
        "on Colab, Runtime → Restart session frees what the kernel holds",
    )


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _ocamlfuse_leftovers() -> list[str]:
    found = []
    sources = [_sys_path("/etc/apt/sources.list")]
    folder = _sys_path("/etc/apt/sources.list.d")
    if folder.is_dir():
        sources += sorted(folder.iterdir())
    for path in sources:
        try:
            if "alessandro-strada" in path.read_text(errors="replace"):
                found.append(
                    f"apt source for ppa:alessandro-strada in /{path.relative_to(_runtime.sysroot())}"
                )
        except OSError:
            continue
    try:
        dpkg = _sys_path("/var/lib/dpkg/status").read_text(errors="replace")
    except OSError:
        dpkg = ""
    if "\nPackage: python-software-properties\n" in f"\n{dpkg}":
        found.append("package python-software-properties (gone from Ubuntu)")
    gdfuse = Path.home() / ".gdfuse"
    configs = sorted(gdfuse.glob("*/config")) if gdfuse.is_dir() else []
    for config in configs:
        try:
            text = config.read_text(errors="replace")
        except OSError:
            continue
        values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        client = values.get("client_id", "").strip()
        if not client:
            continue
        state = config.parent / "state"
        try:
            state_lines = state.read_text(errors="replace").splitlines()
        except OSError:
            state_lines = []
        authorized = any(
            line.startswith("refresh_token=") and line.split("=", 1)[1].strip() for line in state_lines
        )
        if client == _BORROWED_CLIENT_ID:
            found.append(f"~/.gdfuse/{config.parent.name}/config uses Colab's borrowed client id")
        elif not authorized:
            found.append(f"~/.gdfuse/{config.parent.name}/config has a client id but was never authorized")
    if found and _installed("oauth2client"):
        found.append("oauth2client (deprecated) is installed")
    return found


def _check_ocamlfuse(ctx: _Context) -> Check:
    found = _ocamlfuse_leftovers()
    if not found:
        return Check("ocamlfuse recipe", "ok", "no leftovers of the old google-drive-ocamlfuse recipe")
    return Check(
        "ocamlfuse recipe",
        "warn",
        "leftovers of the old google-drive-ocamlfuse recipe: " + "; ".join(found) + ". " + _OOB_STORY,
        "mount with colabkit.mount() (drive.mount on Colab; `colabkit mount` in a terminal), or "
        "colabkit.mount('ocamlfuse') with a service account key or your own OAuth client id; delete the PPA's "
        "file in /etc/apt/sources.list.d/ and the half-made ~/.gdfuse/<label>/ folder",
    )


def _check_vm_time(ctx: _Context) -> Check:
    rt = ctx.runtime
    left = rt.time_left_s
    if left is None:
        return Check(
            "vm time",
            "ok",
            f"up {_format.format_duration(rt.uptime_s)}" if rt.uptime_s is not None else "uptime n/a",
        )
    detail = (
        f"up {_format.format_duration(rt.uptime_s or 0)} of ~{_format.format_duration(rt.vm_limit_s or 0)}, "
        f"about {_format.format_duration(left)} left" + (f" ({rt.limit_label})" if rt.is_kaggle else "")
    )
    if left < _VM_WARN_LEFT_S:
        fix = "the VM ends soon: save checkpoints to Drive now (colabkit.save) and call colabkit.flush()"
        if rt.is_kaggle:
            fix = "the session ends soon: save checkpoints to /kaggle/working now (colabkit.save), then Save Version"
        return Check("vm time", "warn", detail, fix)
    return Check("vm time", "ok", detail)


def _check_secrets(ctx: _Context) -> Check:
    from . import _secrets

    return Check("secrets", *_secrets.verdict(ctx.runtime))


_CHECKS: tuple[tuple[str, Callable[[_Context], Check]], ...] = (
    ("gpu", _check_gpu),
    ("torch", _check_torch),
    ("drive", _check_drive),
    ("disk", _check_disk),
    ("gpu processes", _check_gpu_processes),
    ("ocamlfuse recipe", _check_ocamlfuse),
    ("vm time", _check_vm_time),
    ("secrets", _check_secrets),
)


def doctor() -> Doctor:
    """Check the setup: GPU, torch, Drive, disk, GPU memory holders, old-recipe leftovers, VM time, secrets.

    The secrets check lists which are set and where from (never a value), and warns about a project
    ``.env`` that other users may read or that git could commit.

    Each check is a probe: one that crashes is reported as failed and the others still run.

    Returns:
        A ``Doctor`` whose ``checks`` each carry ``status`` ("ok" | "warn" | "fail"), ``detail`` and ``fix``.

    Examples:
        >>> colabkit.doctor()
        colabkit doctor: 5 ok, 1 warn, 0 fail
          ok    gpu                Tesla T4, 15.0 GiB (0.3 GiB used), driver 550.54.15, CUDA 12.4, sm 7.5
          WARN  drive              Drive is not mounted
                HINT: mount it: colabkit.mount() in a notebook, `colabkit mount` in a terminal
          ...
    """
    try:
        ctx = _Context()
    except Exception:  # runtime detection itself failed: checks that need it will say so
        ctx = _Context.__new__(_Context)
        ctx.runtime, ctx.gpus, ctx.gpu_error = _runtime.Runtime(kind="terminal"), [], None
    checks = []
    for name, check in _CHECKS:
        try:
            checks.append(check(ctx))
        except Exception as exc:  # a probe never stops the others
            checks.append(
                Check(
                    name,
                    "fail",
                    f"the check itself failed: {type(exc).__name__}: {exc}",
                    "report this to colabkit with the output of `colabkit info`",
                )
            )
    return Doctor(tuple(checks))
