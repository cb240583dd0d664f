"""``setup()``: runtime → GPU check → mount → project in one call, and the ``Session`` it returns."""

from __future__ import annotations

import html
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _display, _notebook, _runtime
from ._format import format_gib
from ._notebook import ShownOnce
from ._version import __version__
from .errors import ColabkitError, ColabkitWarning, GpuError, no_gpu_fix

if TYPE_CHECKING:
    from ._drive import Mount
    from ._gpu import GpuInfo
    from ._project import Project
    from ._runtime import Runtime

__all__ = ["Session", "setup"]

GPU_MODES = ("require", "prefer", False)
MOUNT_MODES = ("auto", "drive", "ocamlfuse", "local", False)


@dataclass(frozen=True)
class Session(ShownOnce):
    """What ``setup()`` found and opened. ``None`` parts were not asked for (or, for ``gpu``, not found)."""

    runtime: Runtime
    gpu: GpuInfo | None = None
    mount: Mount | None = None
    project: Project | None = None
    gpu_mode: str | bool = "require"

    def __repr__(self) -> str:
        gpu = self.gpu.name if self.gpu is not None else "n/a"
        mount = f"{self.mount.method}:{self.mount.mountpoint}" if self.mount is not None else "n/a"
        proj = str(self.project.path) if self.project is not None else "n/a"
        return f"<Session {self.runtime.kind} gpu={gpu!r} mount={mount} project={proj}>"

    def _rows(self) -> list[tuple[str, str]]:
        rows = [("Runtime", self.runtime.describe())]
        if self.gpu is not None:
            g = self.gpu
            extra = ", ".join(
                x
                for x in (
                    f"{format_gib(g.memory_free)} free" if g.memory_free is not None else "",
                    f"driver {g.driver_version}" if g.driver_version else "",
                    f"CUDA {g.cuda_driver_version}" if g.cuda_driver_version else "",
                )
                if x
            )
            rows.append(("GPU", f"{g.name}, {format_gib(g.memory_total)}" + (f" ({extra})" if extra else "")))
        elif self.gpu_mode is False:
            rows.append(("GPU", "not checked (gpu=False)"))
        else:
            rows.append(("GPU", "none: running on CPU"))
        rows.append(
            ("Drive", self.mount.describe() if self.mount is not None else "not mounted (mount=False)")
        )
        if self.project is not None:
            rows.append(("Project", self.project.describe()))
            if self.project.kept:
                rows.append(("Kept", "preinstalled " + ", ".join(self.project.kept)))
        return rows

    def summary(self) -> str:
        """At most 8 lines of text: the header, then runtime, GPU, Drive and project."""
        lines = [f"colabkit {__version__} ready"] + [f"{k:<8} {v}" for k, v in self._rows()]
        return "\n".join(lines[:8])

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in self._rows()
        )
        return f"<b>colabkit {html.escape(__version__)} ready</b><table>{body}</table>"

    def _bundle(self) -> dict[str, str]:
        return {"text/plain": self.summary(), "text/html": self._repr_html_()}


def _check_gpu(mode: str | bool) -> GpuInfo | None:
    if mode is False:
        return None
    from . import _gpu

    if mode == "require":
        return _gpu.require_gpu(check_torch=True)  # torch checked in a child: no CUDA context here
    try:
        found = _gpu.gpus()
    except (
        GpuError
    ) as exc:  # NVML is there but broken: an old pynvml shadowing nvidia-ml-py, a driver upgrade
        warnings.warn(
            f"the GPU could not be checked: {exc.message} Going on on the CPU (gpu='prefer'). "
            f"To use the GPU: {exc.hint or 'restart the runtime.'}",
            ColabkitWarning,
            stacklevel=3,
        )
        return None
    if not found:
        rt = _runtime.detect_runtime()
        warnings.warn(
            f"no NVIDIA GPU found: going on on the CPU (gpu='prefer'). {no_gpu_fix(rt.kind, tpu=rt.tpu)}",
            ColabkitWarning,
            stacklevel=3,
        )
        return None
    return found[0]


def setup(
    project: str | os.PathLike[str] | None = None,
    *,
    gpu: str | bool = "require",
    mount: str | bool = "auto",
    install: bool = True,
) -> Session:
    """Check the runtime and GPU, mount Drive, open the project: one call, one compact summary.

    The GPU is checked first, so nothing is mounted or installed on a CPU runtime by mistake. It stops
    at the first failure with its fix. Running it again changes nothing.

    Args:
        project: Folder under My Drive (``"test"``), ``"MyDrive/test"`` or an absolute path; None opens none.
        gpu: ``"require"`` (raise NoGpuError with the fix), ``"prefer"`` (warn and go on on the CPU, also when NVML
            itself is broken) or False.
        mount: ``"auto"`` (drive on Colab, else the local folder), ``"drive"``, ``"ocamlfuse"``, ``"local"``
            or False.
        install: Install the project's requirements.txt when it changed.

    Returns:
        The Session, also printed as a summary of at most 8 lines (a table in a notebook).

    Raises:
        NoGpuError: gpu="require" and no GPU: switch the runtime type to a GPU.
        MountError: Drive could not be mounted (see ``reason`` and ``hint``).
        ProjectNotFound: The project folder does not exist; ``candidates`` holds close names.
        InstallError: pip failed on requirements.txt.

    Examples:
        >>> s = colabkit.setup("test")
        colabkit 0.1.0 ready
        Runtime  Colab (release-colab_20250101-060000_RC00), up 0h03m of ~12h00m
        GPU      Tesla T4, 15.0 GiB (14.7 GiB free, driver 550.54.15, CUDA 12.4)
        Drive    drive at /content/drive, files in /content/drive/MyDrive
        Project  test at /content/drive/MyDrive/test (cwd), requirements up to date
    """
    if gpu not in GPU_MODES:
        raise ValueError(f"gpu={gpu!r}: use 'require', 'prefer' or False")
    if mount not in MOUNT_MODES:
        raise ValueError(f"mount={mount!r}: use 'auto', 'drive', 'ocamlfuse', 'local' or False")
    if project is not None and mount is False and not os.path.isabs(os.path.expanduser(os.fspath(project))):
        raise ValueError(
            f"project={os.fspath(project)!r} is relative to Drive, but mount=False: pass an absolute path"
        )
    _notebook.warnings_as_notes()
    try:
        session = _setup(project, gpu=gpu, mount=mount, install=install)
    except ColabkitError as exc:
        _notebook.setup_failed(exc)  # the cells after this one say so instead of a bare NameError
        raise
    _notebook.setup_finished()
    if _runtime.display_mode() == "notebook":
        _notebook.show_once(session, session._bundle())  # as the cell's last line it is not shown twice
    else:
        _display.note(session.summary())
    return session


def _setup(project: str | os.PathLike[str] | None, *, gpu: str | bool, mount: str | bool, install: bool) -> Session:
    rt = _runtime.detect_runtime()
    info = _check_gpu(gpu)
    m = None
    if mount is not False:
        from . import _drive

        m = _drive.mount(mount)
    proj = None
    if project is not None:
        from . import _project

        proj = _project.project(project, install=install)
    return Session(runtime=rt, gpu=info, mount=m, project=proj, gpu_mode=gpu)
