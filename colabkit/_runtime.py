"""Where colabkit runs: Colab, Kaggle, Jupyter or a terminal, and how to show output there."""

from __future__ import annotations

import builtins
import html
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ._format import format_duration

__all__ = ["COLAB_VM_LIMIT_S", "Runtime", "boot_id", "detect_runtime", "display_mode", "sysroot"]

COLAB_VM_LIMIT_S = 12 * 3600.0  # the free tier's documented "at most 12 hours"


def sysroot() -> Path:
    """Root for machine files (``/var/colab/hostname``, ``/proc/uptime``); ``$COLABKIT_SYSROOT`` fakes a VM in tests."""
    return Path(os.environ.get("COLABKIT_SYSROOT") or "/")


def _path(rel: str) -> Path:
    return sysroot() / rel.lstrip("/")


@dataclass(frozen=True)
class Runtime:
    """What kind of machine and front end this is.

    ``kind`` is ``"colab"``, ``"kaggle"``, ``"jupyter"`` or ``"terminal"``. ``uptime_s`` is the VM's
    uptime in seconds (``None`` if unreadable); ``vm_limit_s`` the documented lifetime on Colab's free tier.
    """

    kind: str
    colab_release: str | None = None
    colab_enterprise: bool = False
    tpu: bool = False
    kaggle_run_type: str | None = None
    shell: str | None = None  # class name of the IPython shell, if any
    uptime_s: float | None = None

    @property
    def is_colab(self) -> bool:
        return self.kind == "colab"

    @property
    def in_notebook(self) -> bool:
        return self.shell is not None and self.shell != "TerminalInteractiveShell"

    @property
    def vm_limit_s(self) -> float | None:
        return COLAB_VM_LIMIT_S if self.is_colab else None

    @property
    def time_left_s(self) -> float | None:
        """Seconds left before the ~12 h Colab VM limit, ``None`` off Colab or when uptime is unknown."""
        if self.vm_limit_s is None or self.uptime_s is None:
            return None
        return max(0.0, self.vm_limit_s - self.uptime_s)

    def __repr__(self) -> str:
        fields = [f"kind={self.kind!r}"]
        for name in ("colab_release", "colab_enterprise", "tpu", "kaggle_run_type", "shell", "uptime_s"):
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
        if self.uptime_s is not None:
            up = f"up {format_duration(self.uptime_s)}"
            if self.time_left_s is not None:
                up += f" of ~{format_duration(self.vm_limit_s or 0)}"
            parts.append(up)
        return ", ".join(parts)



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


def detect_runtime() -> Runtime:
    """Read the runtime from the environment now (never cached: a test or a user can change it).

    Colab is a VM with ``/var/colab/hostname`` or ``$COLAB_RELEASE_TAG``, or a Colab IPython shell;
    importing ``google.colab`` proves nothing, since the package installs anywhere.

    Examples:
        >>> colabkit.detect_runtime().describe()
        'Colab (release-colab_20250101-060000_RC00), up 0h41m of ~12h00m'
    """
    release = os.environ.get("COLAB_RELEASE_TAG") or None
    enterprise = os.environ.get("VERTEX_PRODUCT") == "COLAB_ENTERPRISE"
    shell = _shell_name()
    if release or enterprise or _path("/var/colab/hostname").exists() or _is_colab_shell():
        kind = "colab"
    elif os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        kind = "kaggle"
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
        uptime_s=_uptime_s(),
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

