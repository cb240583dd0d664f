"""Where colabkit runs: Colab, Kaggle, Jupyter or a terminal, and how to show output there."""

from __future__ import annotations

import builtins
import html
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ._format import format_duration

__all__ = [
    "COLAB_VM_LIMIT_S",
    "FRONT_ENDS",
    "FRONT_END_ENV",
    "KAGGLE_BATCH_LIMIT_S",
    "KAGGLE_INTERACTIVE_LIMIT_S",
    "Runtime",
    "boot_id",
    "detect_runtime",
    "display_mode",
    "forget_front_end",
    "kaggle_input",
    "kaggle_working",
    "remember_front_end",
    "sysroot",
]

COLAB_VM_LIMIT_S = 12 * 3600.0  # the free tier's documented "at most 12 hours"
KAGGLE_INTERACTIVE_LIMIT_S = 12 * 3600.0  # an interactive Kaggle session: about 12 hours
KAGGLE_BATCH_LIMIT_S = 9 * 3600.0  # a committed (Save Version) run: about 9 hours; the shorter one when unsure
# What drives a Colab kernel: "browser" (colab.research.google.com), "vscode" (the Colab VS Code extension),
# "headless" (no browser answers: google-colab-cli or another kernel client), "terminal" (no kernel at all:
# a shell on the VM). None: not established (yet) or not Colab.
FRONT_ENDS = ("browser", "vscode", "headless", "terminal")
FRONT_END_ENV = "COLABKIT_FRONTEND"  # one of FRONT_ENDS: overrides the detection
_VSCODE_CELL = "vscode-"  # vscode-jupyter sends metadata.cellId = the cell's URI: vscode-notebook-cell:...
_probed: dict[str, str] = {}  # kernel client session id -> the front end a probe established


def sysroot() -> Path:
    """Root for machine files (``/var/colab/hostname``, ``/proc/uptime``); ``$COLABKIT_SYSROOT`` fakes a VM in tests."""
    return Path(os.environ.get("COLABKIT_SYSROOT") or "/")


def _path(rel: str) -> Path:
    return sysroot() / rel.lstrip("/")


@dataclass(frozen=True)
class Runtime:
    """What kind of machine and front end this is.

    ``kind`` is ``"colab"``, ``"kaggle"``, ``"jupyter"`` or ``"terminal"``. ``uptime_s`` is how long the
    machine has been up in seconds: the VM on Colab, the session's container on Kaggle (``None`` if
    unreadable). ``vm_limit_s`` is the lifetime that ends it: ~12 h on Colab's free tier, ~12 h for an
    interactive Kaggle session and ~9 h for a committed one. ``front_end`` says what drives a Colab kernel
    (one of :data:`FRONT_ENDS`, ``None`` when not established).
    """

    kind: str
    colab_release: str | None = None
    colab_enterprise: bool = False
    tpu: bool = False
    kaggle_run_type: str | None = None
    shell: str | None = None  # class name of the IPython shell, if any
    uptime_s: float | None = None
    front_end: str | None = None

    @property
    def is_kaggle(self) -> bool:
        return self.kind == "kaggle"

    @property
    def has_browser(self) -> bool | None:
        """Whether a person with a browser stands behind this Colab kernel (``None``: not established)."""
        if self.front_end is None:
            return None
        return self.front_end == "browser"

    @property
    def is_colab(self) -> bool:
        return self.kind == "colab"

    @property
    def in_notebook(self) -> bool:
        return self.shell is not None and self.shell != "TerminalInteractiveShell"

    @property
    def vm_limit_s(self) -> float | None:
        """The machine's lifetime in seconds: the Colab VM's or the Kaggle session's; ``None`` elsewhere."""
        if self.is_colab:
            return COLAB_VM_LIMIT_S
        if self.is_kaggle:
            return KAGGLE_INTERACTIVE_LIMIT_S if self.kaggle_run_type == "Interactive" else KAGGLE_BATCH_LIMIT_S
        return None

    @property
    def limit_label(self) -> str | None:
        """The limit as a sentence says it: ``the Colab VM's ~12 h limit``, ``the Kaggle session's ~9 h limit``."""
        limit = self.vm_limit_s
        if limit is None:
            return None
        hours = f"~{limit / 3600:g} h"
        if self.is_kaggle:
            kind = "session" if self.kaggle_run_type == "Interactive" else "committed run"
            return f"the Kaggle {kind}'s {hours} limit"
        return f"the Colab VM's {hours} limit"

    @property
    def time_left_s(self) -> float | None:
        """Seconds left before the machine's limit (``vm_limit_s``), ``None`` without one or when uptime is unknown."""
        if self.vm_limit_s is None or self.uptime_s is None:
            return None
        return max(0.0, self.vm_limit_s - self.uptime_s)

    def __repr__(self) -> str:
        fields = [f"kind={self.kind!r}"]
        for name in ("colab_release", "colab_enterprise", "tpu", "kaggle_run_type", "shell", "uptime_s", "front_end"):
            value = getattr(self, name)
            if value not in (None, False):
                fields.append(f"{name}={round(value, 1) if isinstance(value, float) else value!r}")
        return f"Runtime({', '.join(fields)})"

    def _repr_html_(self) -> str:
        return f"<b>Runtime</b> {html.escape(self.describe())}"

    def describe(self) -> str:
        """One line, e.g. ``Colab (release-colab_20250101-060000_RC00), notebook, up 1h02m``."""
        names = {"colab": "Colab", "kaggle": "Kaggle", "jupyter": "Jupyter", "terminal": "terminal"}
        parts = [names.get(self.kind, self.kind)]
        if self.colab_enterprise:
            parts[0] = "Colab Enterprise"
        if self.colab_release:
            parts[0] += f" ({self.colab_release})"
        if self.kaggle_run_type:
            parts[0] += f" ({self.kaggle_run_type})"
        if self.tpu:
            parts.append("TPU runtime")
        if self.front_end in _FRONT_END_NAMES:
            parts.append(_FRONT_END_NAMES[self.front_end])
        if self.uptime_s is not None:
            up = f"up {format_duration(self.uptime_s)}"
            if self.time_left_s is not None:
                up += f" of ~{format_duration(self.vm_limit_s or 0)}"
            parts.append(up)
        return ", ".join(parts)


_FRONT_END_NAMES = {
    "vscode": "driven by VS Code",
    "headless": "no browser (google-colab-cli or another kernel client)",
}


def _shell() -> object | None:
    get_ipython = getattr(builtins, "get_ipython", None)
    if get_ipython is None:
        return None
    try:
        return get_ipython()
    except Exception:  # a half-torn-down kernel: treat as no shell
        return None


def _shell_name() -> str | None:
    get_ipython = getattr(builtins, "get_ipython", None)
    if get_ipython is None:
        return None
    try:
        shell = get_ipython()
    except Exception:  # a half-torn-down kernel: treat as no shell
        return None
    if shell is None:
        return None
    return type(shell).__name__


def _is_colab_shell() -> bool:
    get_ipython = getattr(builtins, "get_ipython", None)
    if get_ipython is None:
        return False
    try:
        return "google.colab" in str(type(get_ipython()))
    except Exception:
        return False


def boot_id() -> str:
    """This boot of the machine (``/proc/sys/kernel/random/boot_id``), ``""`` if unreadable.

    A run recorded as "running" under another boot id was lost with its VM.
    """
    try:
        return _path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _uptime_s() -> float | None:
    try:
        return float(_path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _tpu_present() -> bool:
    if os.environ.get("COLAB_TPU_1VM") == "1" or os.environ.get("TPU_ACCELERATOR_TYPE"):
        return True
    try:
        return any(p.name.startswith("accel") for p in _path("/dev").iterdir())
    except OSError:
        return False


def kaggle_input() -> Path:
    """``/kaggle/input``: the notebook's datasets and competition data, read-only (under ``$COLABKIT_SYSROOT``)."""
    return _path("/kaggle/input")


def kaggle_working() -> Path:
    """``/kaggle/working``: the notebook's writable folder, kept with a saved version (under ``$COLABKIT_SYSROOT``)."""
    return _path("/kaggle/working")


def _container_age_s() -> float | None:
    """Seconds since this container's first process (pid 1) started: a Kaggle session's age."""
    up = _uptime_s()
    try:
        raw = _path("/proc/1/stat").read_bytes()
        ticks = int(raw[raw.rfind(b")") + 2 :].split()[19])  # field 22, starttime, in clock ticks since boot
        started = ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return up
    if up is None or started > up:
        return up
    return up - started


def _parent_message(shell: object) -> dict[str, object]:
    """The request the kernel is answering now (an ``execute_request``), ``{}`` when unknown."""
    parent = getattr(shell, "parent_header", None)
    if not isinstance(parent, dict) or not parent:
        kernel = getattr(shell, "kernel", None)
        get_parent = getattr(kernel, "get_parent", None)
        try:
            parent = get_parent() if callable(get_parent) else None
        except Exception:
            parent = None
    return parent if isinstance(parent, dict) else {}


def _client_session(shell: object) -> str:
    header = _parent_message(shell).get("header")
    session = header.get("session") if isinstance(header, dict) else None
    return session if isinstance(session, str) else ""


def _front_end(kind: str, shell: object | None) -> str | None:
    """What drives this Colab kernel, from what it can see without asking anyone (see docs/front-ends.md)."""
    forced = os.environ.get(FRONT_END_ENV, "").strip().lower()
    if forced in FRONT_ENDS:
        return forced
    if kind != "colab":
        return None
    if shell is None or type(shell).__name__ == "TerminalInteractiveShell":
        return "terminal"
    metadata = _parent_message(shell).get("metadata")
    cell = metadata.get("cellId") if isinstance(metadata, dict) else None
    if isinstance(cell, str) and cell.startswith(_VSCODE_CELL):
        return "vscode"
    return _probed.get(_client_session(shell))


def remember_front_end(front_end: str) -> None:
    """Keep what a probe established about the client now talking to the kernel (per client session)."""
    if front_end not in FRONT_ENDS:
        raise ValueError(f"front_end={front_end!r}: use one of {FRONT_ENDS}")
    _probed[_client_session(_shell())] = front_end


def forget_front_end() -> None:
    """Forget every probe's answer (a test, or a front end that changed)."""
    _probed.clear()


def detect_runtime() -> Runtime:
    """Read the runtime from the environment now (never cached: a test or a user can change it).

    Kaggle (``$KAGGLE_KERNEL_RUN_TYPE``) is checked first: its image is built on Colab's, so Colab's
    packages (and perhaps its marks) are there too, while ``google.colab``'s front-end calls only hang.
    Colab is a VM with ``/var/colab/hostname`` or ``$COLAB_RELEASE_TAG``, or a Colab IPython shell;
    importing ``google.colab`` proves nothing, since the package installs anywhere.

    Examples:
        >>> colabkit.detect_runtime().describe()
        'Colab (release-colab_20250101-060000_RC00), up 0h41m of ~12h00m'
    """
    release = os.environ.get("COLAB_RELEASE_TAG") or None
    enterprise = os.environ.get("VERTEX_PRODUCT") == "COLAB_ENTERPRISE"
    shell_obj = _shell()
    shell = type(shell_obj).__name__ if shell_obj is not None else None
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        kind = "kaggle"
    elif release or enterprise or _path("/var/colab/hostname").exists() or _is_colab_shell():
        kind = "colab"
    elif shell is not None and shell != "TerminalInteractiveShell":
        kind = "jupyter"
    else:
        kind = "terminal"
    return Runtime(
        kind=kind,
        colab_release=release,
        colab_enterprise=enterprise,
        tpu=_tpu_present(),
        kaggle_run_type=os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or None,
        shell=shell,
        uptime_s=_container_age_s() if kind == "kaggle" else _uptime_s(),
        front_end=_front_end(kind, shell_obj),
    )


def display_mode() -> str:
    """``"notebook"`` (update one output in place), ``"terminal"`` (a ``\\r`` line) or ``"plain"`` (lines).

    ``$COLABKIT_DISPLAY`` overrides the detection with one of those three words.
    """
    forced = os.environ.get("COLABKIT_DISPLAY", "").strip().lower()
    if forced in ("notebook", "terminal", "plain"):
        return forced
    shell = _shell_name()
    if shell is not None and shell != "TerminalInteractiveShell":
        return "notebook"
    stream = sys.stdout
    try:
        if stream is not None and stream.isatty() and os.environ.get("TERM") != "dumb":
            return "terminal"
    except (AttributeError, ValueError):
        pass
    return "plain"

