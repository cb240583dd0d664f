"""The project folder on Drive: resolve it, change into it, put it on ``sys.path``, install its requirements once."""

from __future__ import annotations

import difflib
import errno
import hashlib
import html
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from . import _display, _files, _format, _runtime
from ._mounts import Mount
from .errors import InstallError, ProjectNotFound

__all__ = ["PREINSTALLED", "Project", "current_project", "locate", "note_read_only", "project"]

log = logging.getLogger(__name__)

# what Colab ships and a requirements.txt must not silently replace (a CUDA torch for a CPU one, numpy 2 under
# a numpy 1 build of everything else)
PREINSTALLED = ("torch", "torchvision", "torchaudio", "tensorflow", "jax", "jaxlib", "numpy")
# top-level folders of a Drive mount beside MyDrive: {mountpoint}/Shareddrives/<name>,
# {mountpoint}/.shortcut-targets-by-id/<id>/
_BESIDE_MYDRIVE = ("Shareddrives", ".shortcut-targets-by-id")
_STAMP_DIR = ".colabkit"
_STAMP = "requirements.stamp"
_CONSTRAINTS = "preinstalled-constraints.txt"
# a folder that cannot be written: EACCES/EPERM (permissions), EROFS (a read-only mount)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)

_current: Project | None = None


@dataclass(frozen=True)
class Project:
    """An opened project folder.

    ``requirements`` is ``"installed"``, ``"up to date"`` (the stamp matched), ``"skipped"``
    (``install=False``) or ``"none"`` (no requirements.txt).
    """

    name: str
    path: Path
    requirements: str = "none"
    kept: tuple[str, ...] = ()  # preinstalled packages pinned during the install, e.g. ("numpy 1.26.4",)

    def __repr__(self) -> str:
        return f"Project(name={self.name!r}, path='{self.path}', requirements={self.requirements!r})"

    def _repr_html_(self) -> str:
        return (
            f"<b>Project</b> {html.escape(self.name)} at <code>{html.escape(str(self.path))}</code>, "
            f"requirements: {html.escape(self.requirements)}"
        )

    def describe(self) -> str:
        """One line, e.g. ``test at /content/drive/MyDrive/test (cwd), requirements up to date``."""
        return f"{self.name} at {self.path} (cwd), requirements {self.requirements}"


def current_project() -> Project | None:
    """The project opened by the last ``project()`` or ``setup()`` of this process, else None."""
    return _current


def _candidates(folder: Path, name: str) -> tuple[str, ...]:
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return ()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    lowered = [n for n in names if n.lower() == name.lower() and n not in close]
    return tuple(lowered + close)[:5]


def _on_drive(folder: Path) -> bool:
    """Whether ``folder`` is on a FUSE mount (Drive through DriveFS or ocamlfuse), from the mount table alone."""
    from . import _mounts

    found = _mounts.mount_of(Path(os.path.abspath(folder)))
    return found is not None and found.fstype.startswith("fuse")


def _not_found(path: Path, shown: str) -> ProjectNotFound:
    candidates = _candidates(path.parent, path.name)
    if candidates:
        hint = (
            f"Did you mean {' or '.join(repr(c) for c in candidates)}? Pass that name to colabkit.project()."
        )
    elif _on_drive(path.parent):
        where = "in the Files pane or " if _runtime.detect_runtime().is_colab else ""
        hint = (
            f"Upload the project folder to {path.parent} (drag it into My Drive {where}at drive.google.com), "
            "or pass an absolute path."
        )
    else:  # a local folder standing in for Drive (off Colab), or a plain folder
        hint = f"Copy the project folder into {path.parent}, or pass an absolute path."
    return ProjectNotFound(
        f"project folder {shown!r} not found: {path} does not exist", hint, path=path, candidates=candidates
    )


def locate(name_or_path: str | os.PathLike[str], mount: Mount) -> Path:
    """Where a project name points on ``mount``; an absolute path is taken as it is.

    ``"test"`` and ``"MyDrive/test"`` (or ``"My Drive/test"``) are ``<root>/test``; ``"Shareddrives/<drive>/test"``
    and ``".shortcut-targets-by-id/<id>/test"`` sit beside My Drive, in ``<mountpoint>``.

    Examples:
        >>> locate("Shareddrives/lab/test", colabkit.find_mount())
        PosixPath('/content/drive/Shareddrives/lab/test')
    """
    path = Path(os.fspath(name_or_path)).expanduser()
    if path.is_absolute():
        return path
    parts = path.parts
    if parts and parts[0] in ("MyDrive", "My Drive"):
        return mount.root.joinpath(*parts[1:])
    if parts and parts[0] in _BESIDE_MYDRIVE:
        return mount.mountpoint / path  # Shared drives and shortcuts sit next to MyDrive, not in it
    return mount.root / path


def _on_kaggle(path: Path, raw: str) -> Path:
    """A relative project name on Kaggle: ``/kaggle/working/<name>``, a dataset, then a Drive mount if one is live."""
    from . import _drive, _kaggle

    found = _kaggle.locate(path)
    if found is not None:
        return found
    mount = _drive.find_mount()
    if mount is not None and mount.method != "local":
        return locate(path, mount)
    close = _kaggle.candidates(path.name)
    hint = (
        f"Did you mean {' or '.join(repr(c) for c in close)}?"
        if close
        else "Add the dataset that holds it to the notebook (Add Input), or put the folder in /kaggle/working."
    )
    raise ProjectNotFound(
        f"project {raw!r} not found in /kaggle/working or /kaggle/input", hint, path=None, candidates=close
    )


def _resolve(name_or_path: str | os.PathLike[str]) -> Path:
    from . import _drive

    raw = os.fspath(name_or_path)
    path = Path(raw).expanduser()
    if path.is_absolute():
        resolved = path
        _drive.require_mounted(resolved, purpose="open the project")
    elif _runtime.detect_runtime().is_kaggle:
        resolved = _on_kaggle(path, raw)
    else:
        resolved = locate(path, _drive.find_mount() or _drive.mount())
    if not resolved.exists():
        raise _not_found(resolved, raw)
    if not resolved.is_dir():
        raise ProjectNotFound(
            f"project {raw!r} is a file, not a folder: {resolved}",
            f"Pass the folder that holds it: colabkit.project({str(resolved.parent)!r}).",
            path=resolved,
        )
    return resolved.absolute()


def project(
    name_or_path: str | os.PathLike[str], *, install: bool = True, keep_preinstalled: bool = True
) -> Project:
    """Open a project folder: resolve it on Drive, change into it, put it first on ``sys.path``, install deps.

    Args:
        name_or_path: ``"test"`` (``<Mount.root>/test``), ``"MyDrive/test"``, ``"My Drive/test"``,
            ``"Shareddrives/<drive>/test"`` or ``".shortcut-targets-by-id/<id>/test"`` (both beside MyDrive,
            in ``<Mount.mountpoint>``) or an absolute path. A relative name mounts Drive first if nothing
            is mounted.
        install: Install ``requirements.txt`` with pip when it changed since the last install on this machine
            (a stamp in ``<project>/.colabkit/``, or in ``~/.cache/colabkit/stamps/`` when the project folder
            cannot be written). pip's output is captured; a line before and after says it is running.
        keep_preinstalled: Never up- or downgrade the runtime's torch, torchvision, torchaudio, tensorflow,
            jax, jaxlib and numpy (pip gets a constraints file pinning the installed versions).

    Returns:
        The Project; ``colabkit.current_project()`` returns it from now on.

    Raises:
        ProjectNotFound: The folder does not exist (``candidates`` holds the closest names) or is a file.
        InstallError: pip failed; ``output_tail`` holds its last lines.

    Examples:
        >>> colabkit.project("test")
        Project(name='test', path='/content/drive/MyDrive/test', requirements='up to date')
    """
    global _current
    path = _resolve(name_or_path)
    os.chdir(path)
    entry = str(path)
    if not sys.path or sys.path[0] != entry:
        sys.path[:] = [p for p in sys.path if p != entry]
        sys.path.insert(0, entry)
    from . import _pathguard

    _pathguard.install()  # a project on Drive: its entry is skipped, not fatal, once Drive dies or hangs
    _pathguard.remember_project(path)
    status, kept = "none", ()
    if (path / "requirements.txt").is_file():
        status, kept = _install(path, keep_preinstalled) if install else ("skipped", ())
    _current = Project(path.name, path, status, kept)
    note_read_only(path)
    return _current


_read_only_said: set[Path] = set()


def note_read_only(path: Path) -> None:
    """On Kaggle, say once that a project in /kaggle/input (read-only) keeps its runs in /kaggle/working."""
    if path in _read_only_said or not _runtime.detect_runtime().is_kaggle:
        return
    from . import _kaggle

    if _kaggle.is_input(path):
        _read_only_said.add(path)
        _display.note(
            f"colabkit: {path} is a read-only Kaggle dataset: runs and checkpoints go to {_kaggle.writable_home(path)}"
        )


# -- requirements ----------------------------------------------------------------------------------


def _installed(names: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _mentioned(requirements: str, names: dict[str, str]) -> list[str]:
    """Preinstalled packages the requirements file names (``numpy>=1.20``, ``torch==2.1``...)."""
    out = []
    for line in requirements.splitlines():
        token = line.split("#", 1)[0].strip()
        head = token.replace(" ", "")
        for name in names:
            if head.lower().startswith(name) and (len(head) == len(name) or head[len(name)] in "<>=!~[;"):
                out.append(name)
    return out


def _cache_stamp_dir(path: Path) -> Path:
    """Where the stamp of a project folder that cannot be written is kept: ``<cache>/stamps/<sha256 of path>``.

    ``<cache>`` is ``$COLABKIT_CACHE`` or ``~/.cache/colabkit``, the base ``stage()`` uses off Colab.
    """
    base = _files.cache_dir()
    return base / "stamps" / hashlib.sha256(str(path).encode()).hexdigest()


class _StampFolder:
    """``<project>/.colabkit``, or the cache folder once the project folder refused a write (said once)."""

    def __init__(self, project: Path) -> None:
        self.project = project
        self.folder = project / _STAMP_DIR
        self.moved = False

    def candidates(self) -> tuple[Path, Path]:
        return (self.folder, _cache_stamp_dir(self.project))

    def write(self, name: str, text: str) -> Path:
        try:
            return self._write(name, text)
        except OSError as exc:
            if self.moved or exc.errno not in _NOT_WRITABLE:
                raise
            self.folder, self.moved = _cache_stamp_dir(self.project), True
            _display.note(
                f"colabkit: cannot write {self.project / _STAMP_DIR} ({exc.strerror or exc}); keeping the "
                f"requirements stamp in {self.folder} instead"
            )
            return self._write(name, text)

    def _write(self, name: str, text: str) -> Path:
        self.folder.mkdir(parents=self.moved, exist_ok=True)
        target = self.folder / name
        _files.write_text(target, text)
        return target


def _file_id(path: Path, *, follow: bool = True) -> list[int] | None:
    """(device, inode, mtime in ns) of ``path``: a file made again at the same path differs in them."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_mtime_ns]


def _interpreter_identity() -> dict[str, object]:
    """What tells this interpreter's environment from another at the same path.

    The path alone does not: ``python -m venv`` at the same place (after ``rm -rf``) yields the same
    ``sys.executable`` with none of the packages installed. The link or copy at ``sys.executable``, the
    ``pyvenv.cfg`` beside it (written when the venv is made) and the real binary behind it do change.
    """
    exe = Path(sys.executable)
    ident: dict[str, object] = {
        "version": sys.version,
        "real": os.path.realpath(exe),
        "link": _file_id(exe, follow=False),
        "binary": _file_id(exe),
    }
    for cfg in (exe.parent / "pyvenv.cfg", exe.parent.parent / "pyvenv.cfg"):
        found = _file_id(cfg)
        if found is not None:
            ident["venv"] = found
            break
    return ident


def _install(path: Path, keep_preinstalled: bool) -> tuple[str, tuple[str, ...]]:
    """Run pip on requirements.txt unless the stamp says this exact file was installed on this machine.

    The stamp lives in ``<project>/.colabkit/``; when the project folder cannot be written (a read-only
    share, a read-only mount) it lives under the user's cache instead and the install still happens.
    """
    req = path / "requirements.txt"
    text = req.read_text()
    pinned = _installed(PREINSTALLED) if keep_preinstalled else {}
    # the stamp lives on Drive and outlives the VM and the venv: key it to this boot and this interpreter's
    # real identity (a venv deleted and made again at the same path is another environment)
    key = {
        "sha256": hashlib.sha256(req.read_bytes()).hexdigest(),
        "python": sys.executable,
        "interpreter": _interpreter_identity(),
        "boot_id": _runtime.boot_id(),
        "pinned": pinned,
    }
    stamps = _StampFolder(path)
    for folder in stamps.candidates():
        if _files.read_json(folder / _STAMP) == key:
            return "up to date", ()
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-r", str(req)]
    kept = tuple(f"{n} {pinned[n]}" for n in _mentioned(text, pinned))
    if pinned:
        constraints = stamps.write(_CONSTRAINTS, "".join(f"{n}=={v}\n" for n, v in sorted(pinned.items())))
        cmd += ["-c", str(constraints)]
    if kept:
        log.warning(
            "keeping the preinstalled %s; pass keep_preinstalled=False to let pip change them",
            ", ".join(kept),
        )
    # pip's output is captured (its tail goes into the error): say what is happening, or the cell looks hung
    _display.note("colabkit: installing requirements.txt into this runtime (first time, or it changed)…")
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=path, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    took = _format.format_duration(time.monotonic() - started)
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        tail = "\n".join(lines[-12:])
        if kept and ("conflict" in tail.lower() or "ResolutionImpossible" in tail):
            hint = (
                f"requirements.txt asks for other versions of the preinstalled {', '.join(kept)}: drop those "
                "lines (the runtime's builds match its CUDA), or call colabkit.project(..., keep_preinstalled=False)."
            )
        else:
            hint = (
                f"Fix the line pip names in {req} (package name, version, or a pin that does not exist for "
                f"Python {sys.version_info.major}.{sys.version_info.minor}), then run the cell again."
            )
        raise InstallError(
            f"pip could not install {req} (exit {proc.returncode}, after {took}):\n{tail}",
            hint,
            returncode=proc.returncode,
            output_tail=tail,
        )
    _display.note(f"colabkit: requirements.txt installed in {took}")
    stamps.write(_STAMP, json.dumps(key, indent=1, sort_keys=True))
    return "installed", kept
