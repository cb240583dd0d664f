"""_project.py: resolve the folder on Drive, chdir, sys.path, and a real pip install behind a stamp."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import site
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import colabkit
from colabkit import _drive, _files, _mounts, _project
from colabkit.errors import InstallError, ProjectNotFound


@pytest.fixture
def mydrive(tmp_path):
    root = tmp_path / "drive/MyDrive"
    for name in ("test", "cifar-resnet", "thesis"):
        (root / name).mkdir(parents=True)
    (root / "notes.txt").write_text("a file, not a project")
    return root


def test_names_resolve_under_mydrive(mydrive):
    assert _project.current_project() is None
    for spelling in ("test", "MyDrive/test", "My Drive/test", str(mydrive / "test")):
        p = colabkit.project(spelling)
        assert p.path == mydrive / "test" and p.name == "test", spelling
        assert Path.cwd() == mydrive / "test"
        assert sys.path[0] == str(mydrive / "test")
        assert sys.path.count(str(mydrive / "test")) == 1
        assert _project.current_project() == p
    assert p.requirements == "none"
    assert repr(p) == f"Project(name='test', path='{mydrive}/test', requirements='none')"


def test_relative_name_mounts_the_local_stand_in(mydrive):
    colabkit.project("thesis")
    assert _drive.find_mount().root == mydrive


def test_not_found_lists_the_closest_names(mydrive):
    with pytest.raises(ProjectNotFound) as info:
        colabkit.project("tset")
    err = info.value
    assert isinstance(err, FileNotFoundError)
    assert err.candidates == ("test",) and err.path == str(mydrive / "tset")
    assert "'tset' not found" in err.message
    assert err.hint == "Did you mean 'test'? Pass that name to colabkit.project()."
    assert _project.current_project() is None


def test_not_found_without_close_names_says_where_to_put_it(mydrive):
    with pytest.raises(ProjectNotFound) as info:
        colabkit.project("/nowhere/at/all")
    # a local folder, not Drive: no Files pane, no drive.google.com
    assert info.value.candidates == () and info.value.hint == "Copy the project folder into /nowhere/at, or pass an absolute path."


@pytest.mark.fuse
def test_not_found_on_drive_says_to_upload_it(vm):
    colabkit.mount()
    with pytest.raises(ProjectNotFound) as info:
        colabkit.project("nothing-like-it")
    assert info.value.hint == (
        f"Upload the project folder to {vm.mountpoint / 'MyDrive'} (drag it into My Drive in the Files pane or at "
        "drive.google.com), or pass an absolute path."
    )


def test_a_file_is_not_a_project(mydrive):
    with pytest.raises(ProjectNotFound, match="is a file, not a folder"):
        colabkit.project("notes.txt")


def test_relative_drive_folder_survives_the_chdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLABKIT_DRIVE", "rel-drive")
    for name in ("a", "b"):
        (tmp_path / "rel-drive/MyDrive" / name).mkdir(parents=True)
    assert colabkit.project("a").path == tmp_path / "rel-drive/MyDrive/a"
    assert colabkit.project("b").path == tmp_path / "rel-drive/MyDrive/b"  # cwd is now .../a
    assert colabkit.project("MyDrive/a").path == tmp_path / "rel-drive/MyDrive/a"
    assert sorted(os.listdir(tmp_path / "rel-drive/MyDrive/a")) == []  # no stray rel-drive/ in the project
    assert sorted(os.listdir(tmp_path / "rel-drive/MyDrive/b")) == []


def test_shared_drives_and_shortcuts_sit_beside_mydrive(mydrive):
    top = mydrive.parent
    (top / "Shareddrives/Lab/exp").mkdir(parents=True)
    (top / ".shortcut-targets-by-id/1AbC/data").mkdir(parents=True)
    assert colabkit.project("Shareddrives/Lab/exp").path == top / "Shareddrives/Lab/exp"
    assert (
        colabkit.project(".shortcut-targets-by-id/1AbC/data").path
        == top / ".shortcut-targets-by-id/1AbC/data"
    )
    assert colabkit.project("MyDrive").path == mydrive
    with pytest.raises(ProjectNotFound) as info:
        colabkit.project("Shareddrives/Lab/exq")
    assert info.value.path == str(top / "Shareddrives/Lab/exq") and info.value.candidates == ("exp",)


# -- locate(): where a name points on a Mount, without looking at the disk ---------------------------

_COLAB = _mounts.Mount("drive", Path("/content/drive"), Path("/content/drive/MyDrive"))
_OCAMLFUSE = _mounts.Mount("ocamlfuse", Path("/content/gdrive"), Path("/content/gdrive"))


def test_locate_a_plain_name_is_under_the_drive_root():
    assert _project.locate("test", _COLAB) == Path("/content/drive/MyDrive/test")
    assert _project.locate(Path("exp/run1"), _COLAB) == Path("/content/drive/MyDrive/exp/run1")
    assert _project.locate("test", _OCAMLFUSE) == Path("/content/gdrive/test")


def test_locate_mydrive_prefix_is_the_drive_root():
    for spelling in ("MyDrive/test", "My Drive/test"):
        assert _project.locate(spelling, _COLAB) == Path("/content/drive/MyDrive/test"), spelling
        assert _project.locate(spelling, _OCAMLFUSE) == Path("/content/gdrive/test"), spelling
    assert _project.locate("MyDrive", _COLAB) == Path("/content/drive/MyDrive")
    assert _project.locate("My Drive", _COLAB) == Path("/content/drive/MyDrive")


def test_locate_shared_drives_and_shortcuts_sit_beside_mydrive():
    assert _project.locate("Shareddrives/Lab/exp", _COLAB) == Path("/content/drive/Shareddrives/Lab/exp")
    assert _project.locate(".shortcut-targets-by-id/1AbC/data", _COLAB) == Path(
        "/content/drive/.shortcut-targets-by-id/1AbC/data"
    )
    assert _project.locate("Shareddrives/Lab/exp", _OCAMLFUSE) == Path("/content/gdrive/Shareddrives/Lab/exp")


def test_locate_an_absolute_path_is_taken_as_it_is(tmp_path):
    assert _project.locate("/data/test", _COLAB) == Path("/data/test")
    assert _project.locate(tmp_path / "x", _COLAB) == tmp_path / "x"
    assert _project.locate("~/test", _COLAB) == Path.home() / "test"  # ~ is expanded first


def test_locate_never_touches_the_disk(tmp_path):
    # nothing of the mount exists: locate() only computes where the name points
    gone = _mounts.Mount("local", tmp_path / "none", tmp_path / "none/MyDrive")
    assert _project.locate("test", gone) == tmp_path / "none/MyDrive/test"
    assert not (tmp_path / "none").exists()


# -- requirements, installed for real into a throwaway virtual environment -------------------------


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel, written by hand (no build backend, no network)."""
    folder.mkdir(exist_ok=True)
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    out = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return out


@pytest.fixture
def venv(tmp_path, monkeypatch):
    """A virtual environment sharing this one's packages; project() runs pip through it."""
    return _make_venv(tmp_path / "venv", monkeypatch)


_PYTHON = sys.executable  # the tests' own interpreter (the fixture points sys.executable elsewhere)


def _make_venv(env: Path, monkeypatch) -> Path:
    subprocess.run(
        [_PYTHON, "-m", "venv", "--without-pip", "--system-site-packages", str(env)], check=True
    )
    python = env / "bin/python"
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # --system-site-packages shares the base interpreter's packages only: when the tests run inside a
    # virtual environment, a .pth file adds that environment's too (pip, psutil), after the new venv's own
    shared = {p for p in site.getsitepackages() if Path(p).is_dir()}
    (purelib / "_outer_site_packages.pth").write_text("".join(f"{p}\n" for p in sorted(shared)))
    monkeypatch.setattr(sys, "executable", str(python))
    return purelib


def test_requirements_installed_once_per_change(mydrive, venv, tmp_path, capsys):
    wheels = tmp_path / "wheels"
    _wheel(wheels, "tinypkg", "0.1")
    req = mydrive / "test/requirements.txt"
    req.write_text(f"--no-index\n--find-links {wheels}\ntinypkg==0.1\n")
    p = colabkit.project("test")
    assert p.requirements == "installed"
    # pip's output is captured: one line before it starts, one with the time it took
    before, after = capsys.readouterr().out.splitlines()
    assert before == "colabkit: installing requirements.txt into this runtime (first time, or it changed)…"
    assert re.fullmatch(r"colabkit: requirements\.txt installed in \d+\.\ds", after), after
    assert (venv / "tinypkg/__init__.py").read_text() == "VERSION = '0.1'\n"
    assert (mydrive / "test/.colabkit/requirements.stamp").is_file()
    # the stamp matches: pip does not run (it would put the package back)
    for path in venv.glob("tinypkg*"):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    assert colabkit.project("test").requirements == "up to date"
    assert capsys.readouterr().out == ""  # nothing to install, nothing said
    assert not (venv / "tinypkg").exists()
    req.write_text(req.read_text() + "# changed\n")
    assert colabkit.project("test").requirements == "installed"
    assert (venv / "tinypkg/__init__.py").exists()
    assert colabkit.project("test", install=False).requirements == "skipped"


def test_a_venv_made_again_at_the_same_path_gets_the_requirements_again(mydrive, venv, tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    _wheel(wheels, "tinypkg", "0.1")
    (mydrive / "test/requirements.txt").write_text(f"--no-index\n--find-links {wheels}\ntinypkg==0.1\n")
    assert colabkit.project("test").requirements == "installed"
    assert colabkit.project("test").requirements == "up to date"
    subprocess.run(["rm", "-rf", str(tmp_path / "venv")], check=True)
    purelib = _make_venv(tmp_path / "venv", monkeypatch)  # same path, same sys.executable, no tinypkg
    assert purelib == venv and not (purelib / "tinypkg").exists()
    assert colabkit.project("test").requirements == "installed"
    assert (purelib / "tinypkg/__init__.py").read_text() == "VERSION = '0.1'\n"
    stamp = json.loads((mydrive / "test/.colabkit/requirements.stamp").read_text())
    assert stamp["python"] == str(tmp_path / "venv/bin/python") and stamp["interpreter"]["venv"]


def test_failed_install_shows_pips_tail(mydrive, venv, tmp_path, capsys):
    (tmp_path / "wheels").mkdir()
    (mydrive / "test/requirements.txt").write_text(
        f"--no-index\n--find-links {tmp_path}/wheels\nno-such-pkg==9.9\n"
    )
    with pytest.raises(InstallError) as info:
        colabkit.project("test")
    err = info.value
    assert err.returncode == 1
    assert "No matching distribution found for no-such-pkg==9.9" in err.output_tail
    assert err.output_tail in err.message
    assert "Fix the line pip names in" in err.hint
    assert re.search(r"\(exit 1, after \d+\.\ds\):", err.message)
    assert not (mydrive / "test/.colabkit/requirements.stamp").exists()
    assert capsys.readouterr().out.splitlines() == [
        "colabkit: installing requirements.txt into this runtime (first time, or it changed)…"
    ]


def test_preinstalled_packages_are_not_replaced_unless_asked(mydrive, venv, tmp_path, monkeypatch):
    # psutil stands in for a preinstalled package: installed here, and a fake older release is offered
    monkeypatch.setattr(_project, "PREINSTALLED", ("psutil",))
    have = metadata.version("psutil")
    wheels = tmp_path / "wheels"
    _wheel(wheels, "psutil", "0.0.1")
    (mydrive / "test/requirements.txt").write_text(f"--no-index\n--find-links {wheels}\npsutil==0.0.1\n")
    with pytest.raises(InstallError) as info:
        colabkit.project("test")
    assert f"psutil {have}" in info.value.hint and "keep_preinstalled=False" in info.value.hint
    assert (mydrive / "test/.colabkit/preinstalled-constraints.txt").read_text() == f"psutil=={have}\n"
    assert not list(venv.glob("psutil*"))
    p = colabkit.project("test", keep_preinstalled=False)
    assert p.requirements == "installed"
    assert (venv / "psutil/__init__.py").read_text() == "VERSION = '0.0.1'\n"  # only in the throwaway venv


def test_kept_packages_are_reported(mydrive, venv, tmp_path, monkeypatch):
    monkeypatch.setattr(_project, "PREINSTALLED", ("psutil",))
    (mydrive / "test/requirements.txt").write_text("--no-index\npsutil>=1.0  # any recent\n")
    p = colabkit.project("test")
    assert p.kept == (f"psutil {metadata.version('psutil')}",)
    assert os.path.samefile(Path.cwd(), mydrive / "test")


def _refuse_writes_under(monkeypatch, folder: Path) -> None:
    """Make every mkdir and write under ``folder`` fail as on a read-only share (root ignores chmod)."""
    real_mkdir, real_write = Path.mkdir, Path.write_text

    def refuse(path: Path) -> None:
        if path == folder or folder in path.parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def mkdir(self, *args, **kwargs):
        refuse(self)
        return real_mkdir(self, *args, **kwargs)

    def write_text(self, *args, **kwargs):
        refuse(self)
        return real_write(self, *args, **kwargs)

    def replacing(path, *args, **kwargs):  # colabkit's atomic writes
        refuse(path)
        return real_replacing(path, *args, **kwargs)

    real_replacing = _files.replacing
    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(Path, "write_text", write_text)
    monkeypatch.setattr(_files, "replacing", replacing)


def _tiny_requirements(project: Path, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    _wheel(wheels, "tinypkg", "0.1")
    (project / "requirements.txt").write_text(f"--no-index\n--find-links {wheels}\ntinypkg==0.1\n")


def _read_only_install(mydrive, capsys, cache: Path) -> None:
    project = mydrive / "test"
    p = colabkit.project("test")
    assert p.requirements == "installed"
    stamps = cache / "stamps" / hashlib.sha256(str(project).encode()).hexdigest()
    assert (stamps / "requirements.stamp").is_file()
    assert (stamps / "preinstalled-constraints.txt").read_text() == f"psutil=={metadata.version('psutil')}\n"
    assert not (project / ".colabkit").exists()
    said = capsys.readouterr().out.splitlines()
    assert said[0] == (
        f"colabkit: cannot write {project}/.colabkit (Permission denied); keeping the requirements stamp "
        f"in {stamps} instead"
    )
    assert said[1] == "colabkit: installing requirements.txt into this runtime (first time, or it changed)…"
    assert said[2].startswith("colabkit: requirements.txt installed in ") and len(said) == 3  # said once
    # the stamp under the cache counts: no second install
    assert colabkit.project("test").requirements == "up to date"
    assert capsys.readouterr().out == ""


def test_read_only_project_keeps_its_stamp_in_the_cache(mydrive, venv, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_project, "PREINSTALLED", ("psutil",))
    monkeypatch.setenv("COLABKIT_CACHE", str(tmp_path / "cache"))
    _tiny_requirements(mydrive / "test", tmp_path)
    _refuse_writes_under(monkeypatch, mydrive / "test")
    _read_only_install(mydrive, capsys, tmp_path / "cache")
    assert (venv / "tinypkg/__init__.py").read_text() == "VERSION = '0.1'\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder whatever its mode")
def test_read_only_project_by_mode(mydrive, venv, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_project, "PREINSTALLED", ("psutil",))
    project = mydrive / "test"
    _tiny_requirements(project, tmp_path)
    project.chmod(0o555)
    try:
        _read_only_install(mydrive, capsys, Path.home() / ".cache/colabkit")
    finally:
        project.chmod(0o755)


def test_other_write_errors_are_not_hidden(mydrive, venv, tmp_path, monkeypatch):
    monkeypatch.setattr(_project, "PREINSTALLED", ("psutil",))
    (mydrive / "test/requirements.txt").write_text("--no-index\npsutil\n")
    real_write, real_replacing = Path.write_text, _files.replacing

    def no_space(path: Path) -> None:
        if path.parent == mydrive / "test/.colabkit":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    def full(self, *args, **kwargs):
        no_space(self)
        return real_write(self, *args, **kwargs)

    def replacing(path, *args, **kwargs):  # colabkit's atomic writes
        no_space(path)
        return real_replacing(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    monkeypatch.setattr(_files, "replacing", replacing)
    with pytest.raises(OSError, match="No space left on device"):
        colabkit.project("test")
