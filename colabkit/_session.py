"""``setup()``: runtime → GPU check → the steps that need a person (Drive, secrets) → the slow ones (torch, the
project's requirements) in one call, and the ``Session`` it returns."""

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
from .errors import NO_GPU, ColabkitError, ColabkitWarning, GpuError, no_gpu_note

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from ._drive import Mount
    from ._gpu import GpuInfo
    from ._project import Project
    from ._runtime import Runtime
    from ._secrets import Secrets

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
    secrets: Secrets | None = None

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
            rows.append(("GPU", NO_GPU.replace("no GPU", "none", 1)))
        if self.mount is not None:
            rows.append(("Drive", self.mount.describe()))
        elif self.runtime.is_kaggle:
            rows.append(("Drive", "not used on Kaggle: the notebook's files are in /kaggle/working"))
        else:
            rows.append(("Drive", "not mounted (mount=False)"))
        if self.project is not None:
            rows.append(("Project", self.project.describe()))
            if self.project.kept:
                rows.append(("Kept", "preinstalled " + ", ".join(self.project.kept)))
        if self.secrets:
            rows.append(("Secrets", self.secrets.describe()))
        cc = self.gpu.compute_capability if self.gpu is not None else None
        if cc is not None and cc < (8, 0):  # a T4 is sm_75: bf16 is emulated there, fp16 is the fast path
            rows.append(("Note", f"the {self.gpu.name} has no native bfloat16: train with float16 autocast"))  # type: ignore[union-attr]
        return rows

    def summary(self) -> str:
        """At most 8 lines of text: the header, then runtime, GPU, Drive and project."""
        lines = [f"colabkit {__version__} ready"] + [f"{k:<8} {v}" for k, v in self._rows()]
        return "\n".join(lines[:8])

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr>{_display.html_cell(html.escape(k), 'th')}{_display.html_cell(html.escape(v))}</tr>"
            for k, v in self._rows()
        )
        return f"<b>colabkit {html.escape(__version__)} ready</b><table>{body}</table>"

    def _bundle(self) -> dict[str, str]:
        return {"text/plain": self.summary(), "text/html": self._repr_html_()}


def _check_gpu(mode: str | bool) -> GpuInfo | None:
    """``"probe"``: NVML's answer, raising NoGpuError as ``"require"`` does, without torch's check."""
    if mode is False:
        return None
    from . import _gpu

    if mode in ("require", "probe"):
        return _gpu.require_gpu(check_torch=mode == "require")  # torch checked in a child: no CUDA context here
    try:
        found = _gpu.gpus()
    except (
        GpuError
    ) as exc:  # NVML is there but broken: an old pynvml shadowing nvidia-ml-py, a driver upgrade
        warnings.warn(
            f"the GPU could not be checked: {exc.message.rstrip('.')}; running on the CPU, much slower. "
            f"To use the GPU: {exc.hint or 'restart the runtime.'}",
            ColabkitWarning,
            stacklevel=3,
        )
        return None
    if not found:
        rt = _runtime.detect_runtime()
        warnings.warn(no_gpu_note(rt.kind, tpu=rt.tpu), ColabkitWarning, stacklevel=3)
        _display.said(NO_GPU)  # a run() after this one does not say it again
        return None
    return found[0]


def setup(
    project: str | os.PathLike[str] | None = None,
    *,
    gpu: str | bool = "require",
    mount: str | bool = "auto",
    install: bool = True,
    secrets: Sequence[str] = (),
) -> Session:
    """Check the runtime and GPU, mount Drive, find the secrets, open the project: one call, one compact summary.

    The GPU is checked first (NVML, instant), so nothing is mounted or installed on a CPU runtime by
    mistake. Then come the steps that may need a person: Drive's consent popup and Colab's secrets; then
    the slow ones: PyTorch's check (in a child process) and the project's requirements. So the popup shows
    within seconds, not after minutes of installing. In VS Code the Colab extension answers Drive's consent
    itself (a note says what to click); where nobody can (google-colab-cli, a shell on the VM) Drive fails at
    once with the fix for that front end, and Colab's secrets, which only its web UI answers, are skipped.
    It stops at the first failure with its fix. Running it again changes nothing.

    On Kaggle nothing is mounted (``mount="auto"``): the project is the working folder (``project=None``),
    a folder in it, or a dataset under ``/kaggle/input``, whose runs and checkpoints go to ``/kaggle/working``.

    Args:
        project: Folder under My Drive (``"test"``), ``"MyDrive/test"`` or an absolute path; None opens none.
        gpu: ``"require"`` (raise NoGpuError with the fix), ``"prefer"`` (say so once and run on the CPU, also when NVML
            itself is broken) or False.
        mount: ``"auto"`` (drive on Colab, else the local folder), ``"drive"``, ``"ocamlfuse"``, ``"local"``
            or False.
        install: Install the project's requirements.txt when it changed.
        secrets: Names to find now (``["HF_TOKEN"]``) in Colab's or Kaggle's secrets, the environment or the
            project's ``.env``; ``run(secrets=...)`` then uses them without asking again. Never shown.

    Returns:
        The Session, also printed as a summary of at most 8 lines (a table in a notebook).

    Raises:
        NoGpuError: gpu="require" and no GPU: switch the runtime type to a GPU.
        MountError: Drive could not be mounted (see ``reason`` and ``hint``).
        ProjectNotFound: The project folder does not exist; ``candidates`` holds close names.
        InstallError: pip failed on requirements.txt.
        SecretNotFound: a secret is in none of its sources; the hint says how to set it here.

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
    relative = project is not None and not os.path.isabs(os.path.expanduser(os.fspath(project)))
    if relative and mount is False and not _runtime.detect_runtime().is_kaggle:
        raise ValueError(
            f"project={os.fspath(project)!r} is relative to Drive, but mount=False: pass an absolute path"
        )
    _notebook.warnings_as_notes()
    try:
        session = _setup(project, gpu=gpu, mount=mount, install=install, secrets=secrets)
    except ColabkitError as exc:
        _notebook.setup_failed(exc)  # the cells after this one say so instead of a bare NameError
        raise
    _notebook.setup_finished()
    if _runtime.display_mode() == "notebook":
        _notebook.show_once(session, session._bundle())  # as the cell's last line it is not shown twice
    else:
        _display.note(session.summary())
    return session


def _setup(
    project: str | os.PathLike[str] | None,
    *,
    gpu: str | bool,
    mount: str | bool,
    install: bool,
    secrets: Sequence[str],
) -> Session:
    rt = _runtime.detect_runtime()
    # fast: NVML only; torch's check (seconds: it imports torch in a child) comes after the steps for a person
    info = _check_gpu("probe" if gpu == "require" else gpu)
    m = None
    if mount is not False and not (mount == "auto" and rt.is_kaggle):
        from . import _drive

        m = _drive.mount(mount)  # may need a person: Drive's consent popup
    found = None
    if secrets:
        from . import _secrets

        # may need a person: Colab asks to grant the notebook access; the project's .env is the last source
        found = _secrets.resolve(secrets, project=_project_folder(project, rt))
    if gpu == "require":
        from . import _gpu

        info = _gpu.require_gpu(check_torch=True)
    proj = None
    if project is not None or rt.is_kaggle:
        proj = _open_project(project, rt, install=install)
    return Session(runtime=rt, gpu=info, mount=m, project=proj, gpu_mode=gpu, secrets=found)


def _project_folder(project: str | os.PathLike[str] | None, rt: Runtime) -> Path | None:
    """The folder ``_open_project`` will open (its ``.env`` holds secrets), found before anything slow runs."""
    if project is None and not rt.is_kaggle:
        return None
    from . import _project

    return _project._resolve(project if project is not None else ".")


def _open_project(project: str | os.PathLike[str] | None, rt: Runtime, *, install: bool) -> Project:
    from . import _project

    # on Kaggle without a name: the notebook's working folder (also its cwd)
    return _project.project(project if project is not None else ".", install=install)
