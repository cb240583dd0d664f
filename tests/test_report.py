"""colabkit._report: info() and doctor() verdicts on a faked machine root, a scripted NVML and real folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import psutil
import pytest
from conftest import NO_DRIVER
from fakes.colabvm import bindfs
from fakes.nvml import GIB, FakeDevice, FakeNvml

import colabkit
from colabkit import _drive, _nvml, _report

T4_LINE = "Tesla T4, 15.0 GiB (0.5 GiB used), driver 550.54.15, CUDA 12.4, sm 7.5"


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A fake machine root: /proc/uptime says 1h02m05s, /content exists."""
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "uptime").write_text("3725.5 7000.0\n")
    (root / "content").mkdir()
    monkeypatch.setenv("COLABKIT_SYSROOT", str(root))
    return root


@pytest.fixture
def t4():
    lib = FakeNvml([FakeDevice(used=512 * 1024**2)])
    with _nvml._use_library(lib):
        yield lib


@pytest.fixture
def drive_module(monkeypatch):
    """colabkit._drive with a scripted status() (restored after the test): set ``find_mount`` to what it finds
    and ``state`` to how that mount answers (``"live"``, ``"dead"``, ``"hung"``)."""
    script = types.SimpleNamespace(find_mount=lambda: None, state="live")

    def status():
        found = script.find_mount()
        return _drive.DriveStatus(script.state if found is not None else "not_mounted", found)

    monkeypatch.setattr(_drive, "status", status)
    return script


def _mount(root: Path, *, readonly=False, method="local"):
    return types.SimpleNamespace(method=method, mountpoint=root, root=root, readonly=readonly)


# --- info ----------------------------------------------------------------------------------------


def test_info_reports_every_part(machine, t4, drive_module, tmp_path):
    drive_root = tmp_path / "drive"
    drive_root.mkdir()
    drive_module.find_mount = lambda: _mount(drive_root)
    result = colabkit.info()
    rows = dict(result.rows())
    assert rows["runtime"] == "terminal"  # the uptime is shown once, in its own row
    assert rows["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
    assert rows["gpu 0"] == T4_LINE
    assert rows["disk"].endswith(f" at {machine / 'content'}")
    assert rows["drive"] == f"local folder {drive_root} (stand-in for Drive, read-write)"
    assert rows["cuda"] == "driver supports CUDA 12.4"
    assert rows["uptime"] == "1h02m"
    assert result.ram_total == psutil.virtual_memory().total
    usage = shutil.disk_usage(machine / "content")
    assert result.disk_total == usage.total
    assert result.problems == ()
    lines = str(result).splitlines()
    assert lines[0] == f"colabkit {colabkit.__version__} info"
    assert f"  gpu 0    {T4_LINE}" in lines
    assert repr(result) == str(result)
    assert str(result).count("1h02m") == 1


def test_info_on_colab_shows_the_vm_limit(machine, t4, drive_module, monkeypatch):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20250101-060000_RC00")
    rows = dict(colabkit.info().rows())
    assert rows["runtime"] == "Colab (release-colab_20250101-060000_RC00)"
    assert rows["uptime"] == "1h02m of ~12h00m (about 10h57m left)"
    assert str(colabkit.info()).count("1h02m") == 1
    assert rows["drive"] == "not mounted"


@NO_DRIVER
def test_info_without_a_gpu_on_this_machine(machine):
    result = colabkit.info()
    assert result.gpus == ()
    assert (
        dict(result.rows())["gpu"] == "none: No NVIDIA GPU found (NVML library libnvidia-ml.so.1 not found)."
    )


def test_info_survives_a_broken_drive_probe(machine, t4, drive_module):
    def boom():
        raise RuntimeError("boom")

    drive_module.find_mount = boom
    result = colabkit.info()
    assert result.problems == ("drive: RuntimeError: boom",)
    assert "  problem  drive: RuntimeError: boom" in str(result).splitlines()


def test_info_html_is_escaped(machine, drive_module):
    with _nvml._use_library(FakeNvml([FakeDevice(name="<script>alert(1)</script>")])):
        html = colabkit.info()._repr_html_()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


# --- doctor --------------------------------------------------------------------------------------


def test_doctor_all_good(machine, t4, drive_module, tmp_path):
    drive_root = tmp_path / "drive"
    drive_root.mkdir()
    drive_module.find_mount = lambda: _mount(drive_root)
    result = colabkit.doctor()
    assert [(c.name, c.status) for c in result.checks] == [
        ("gpu", "ok"),
        ("torch", "ok"),
        ("drive", "ok"),
        ("disk", "ok"),
        ("gpu processes", "ok"),
        ("ocamlfuse recipe", "ok"),
        ("vm time", "ok"),
        ("secrets", "ok"),
    ]
    assert result.ok and result.summary() == "8 ok, 0 warn, 0 fail"
    assert result["gpu"].detail == T4_LINE
    assert result["drive"].detail == f"local folder {drive_root} (stand-in for Drive, read-write), writable"
    # the probe writes inside .colabkit/ and keeps its one file: deleting on Drive would fill the trash
    assert [p.relative_to(drive_root).as_posix() for p in drive_root.rglob("*")] == [
        ".colabkit",
        ".colabkit/doctor-write-test",
    ]
    colabkit.doctor()
    assert len(list(drive_root.rglob("*"))) == 2, "a second doctor() must reuse the probe file"
    lines = str(result).splitlines()
    assert lines[0] == "colabkit doctor: 8 ok, 0 warn, 0 fail"
    assert lines[1] == f"  ok    gpu                {T4_LINE}"


def test_doctor_without_gpu_fails_with_the_fix(machine, drive_module, monkeypatch):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20250101-060000_RC00")
    with _nvml._use_library(FakeNvml([])):
        result = colabkit.doctor()
    check = result["gpu"]
    assert (check.status, check.detail) == ("fail", "No NVIDIA GPU on this Colab runtime (NVML sees 0 GPUs).")
    assert "Runtime → Change runtime type → T4 GPU → Save" in check.fix
    assert not result.ok and result.failed == (check,)
    assert result["gpu processes"].detail == "no GPU (nothing to check)"
    lines = str(result).splitlines()
    assert "  FAIL  gpu                No NVIDIA GPU on this Colab runtime (NVML sees 0 GPUs)." in lines
    assert f"        HINT: {check.fix}" in lines


def test_doctor_names_processes_holding_gpu_memory(machine, drive_module):
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        lib = FakeNvml([FakeDevice(compute=[(child.pid, 3 * GIB)])])
        with _nvml._use_library(lib):
            check = colabkit.doctor()["gpu processes"]
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    assert check.status == "warn"
    assert (
        check.detail
        == f"pid {child.pid} on gpu 0 holds 3.0 GiB: {sys.executable} -c import sys; sys.stdin.read()"
    )
    assert check.fix.startswith("if one is a leftover of an earlier run, stop it: `kill PID`")


def test_doctor_drive_verdicts(machine, t4, drive_module, tmp_path):
    assert colabkit.doctor()["drive"] == _report.Check(
        "drive",
        "warn",
        "Drive is not mounted",
        "mount it: colabkit.mount() in a notebook, `colabkit mount` in a terminal",
    )
    drive_module.find_mount = lambda: _mount(tmp_path, readonly=True, method="drive")
    check = colabkit.doctor()["drive"]
    assert check.status == "warn"
    assert check.detail == (
        f"{tmp_path} (drive, read-only, mounted at {tmp_path}): read-only, runs cannot save logs or "
        "checkpoints there"
    )
    assert check.fix == "remount read-write: colabkit.mount(force=True) (`colabkit mount --force` in a terminal)"
    missing = tmp_path / "gone"
    drive_module.find_mount = lambda: _mount(missing)
    check = colabkit.doctor()["drive"]
    assert check.status == "fail"
    assert check.detail.startswith(f"local folder {missing} (stand-in for Drive, read-write): cannot write: ")
    assert "No such file or directory" in check.detail
    assert check.fix == (
        "the mount is broken or full: remount with colabkit.mount(force=True) (`colabkit mount --force` "
        "in a terminal), and check the Drive quota"
    )


@pytest.mark.fuse
def test_doctor_finds_a_mount_that_refuses_writes(machine, t4, drive_module, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with bindfs(src, tmp_path / "mnt", "-r") as point:
        drive_module.find_mount = lambda: _mount(point, method="drive")  # claims read-write
        check = colabkit.doctor()["drive"]
    assert check.status == "fail"
    assert "Read-only file system" in check.detail


def test_doctor_disk_thresholds(machine, t4, drive_module, monkeypatch):
    free = shutil.disk_usage(machine / "content").free
    monkeypatch.setattr(_report, "_DISK_WARN_BYTES", free + 100 * GIB)
    check = colabkit.doctor()["disk"]
    assert check.status == "warn" and check.detail.endswith(f" at {machine / 'content'}")
    assert "du -sh ~/.cache/* | sort -h" in check.fix
    monkeypatch.setattr(_report, "_DISK_FAIL_BYTES", free + 100 * GIB)
    assert colabkit.doctor()["disk"].status == "fail"


def test_a_crashing_check_is_reported_and_doctor_goes_on(machine, t4, drive_module, monkeypatch):
    def broken(path):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_report.shutil, "disk_usage", broken)
    result = colabkit.doctor()
    assert result["disk"] == _report.Check(
        "disk",
        "fail",
        "the check itself failed: OSError: [Errno 5] Input/output error",
        "report this to colabkit with the output of `colabkit info`",
    )
    assert len(result.checks) == 8 and result["gpu"].status == "ok"
    assert colabkit.info().problems == ("disk: OSError: [Errno 5] Input/output error",)


def test_doctor_finds_the_dead_ocamlfuse_recipe(machine, t4, drive_module, monkeypatch):
    lists = machine / "etc" / "apt" / "sources.list.d"
    lists.mkdir(parents=True)
    (lists / "alessandro-strada-ubuntu-ppa-jammy.list").write_text(
        "deb https://ppa.launchpadcontent.net/alessandro-strada/ppa/ubuntu/ jammy main\n"
    )
    (lists / "other.list").write_text("deb http://archive.ubuntu.com/ubuntu jammy main\n")
    dpkg = machine / "var" / "lib" / "dpkg"
    dpkg.mkdir(parents=True)
    (dpkg / "status").write_text(
        "Package: bash\nStatus: install ok installed\n\nPackage: python-software-properties\n"
    )
    label = Path.home() / ".gdfuse" / "default"
    label.mkdir(parents=True)
    (label / "config").write_text(
        "client_id=32555940559.apps.googleusercontent.com\nclient_secret=not-a-real-secret-7c1e\n"
    )
    monkeypatch.setattr(_report, "_installed", lambda dist: dist == "oauth2client")
    check = colabkit.doctor()["ocamlfuse recipe"]
    assert check.status == "warn"
    assert check.detail.startswith(
        "leftovers of the old google-drive-ocamlfuse recipe: "
        "apt source for ppa:alessandro-strada in /etc/apt/sources.list.d/alessandro-strada-ubuntu-ppa-jammy.list; "
        "package python-software-properties (gone from Ubuntu); "
        "~/.gdfuse/default/config uses Colab's borrowed client id; "
        "oauth2client (deprecated) is installed. "
    )
    assert "stopped working in 2022" in check.detail
    assert '"The out-of-band (OOB) flow has been blocked"' in check.detail
    assert "not-a-real-secret" not in str(colabkit.doctor()), "a client secret reached the output"
    assert check.fix.startswith("mount with colabkit.mount() (drive.mount on Colab; `colabkit mount` in a terminal)")


def test_own_ocamlfuse_client_id_is_fine_once_authorized(machine, t4, drive_module, monkeypatch):
    monkeypatch.setattr(_report, "_installed", lambda dist: True)  # oauth2client alone is no leftover
    label = Path.home() / ".gdfuse" / "mine"
    label.mkdir(parents=True)
    (label / "config").write_text("client_id=1234-abc.apps.googleusercontent.com\n")
    (label / "state").write_text("refresh_token=\n")
    check = colabkit.doctor()["ocamlfuse recipe"]
    assert check.status == "warn"
    assert "~/.gdfuse/mine/config has a client id but was never authorized" in check.detail
    (label / "state").write_text("last_access_token=x\nrefresh_token=1//0abc\n")
    assert colabkit.doctor()["ocamlfuse recipe"].status == "ok"


def test_doctor_warns_near_the_vm_limit(machine, t4, drive_module, monkeypatch):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20250101-060000_RC00")
    (machine / "proc" / "uptime").write_text(f"{11.5 * 3600} 1.0\n")
    check = colabkit.doctor()["vm time"]
    assert check == _report.Check(
        "vm time",
        "warn",
        "up 11h30m of ~12h00m, about 30m00s left",
        "the VM ends soon: save checkpoints to Drive now (colabkit.save) and call colabkit.flush()",
    )


def test_doctor_torch_check_runs_in_a_child(machine, t4, drive_module, tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "torch" / "cuda").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("__version__ = '2.3.0+cpu'\nfrom . import version, cuda\n")
    (site / "torch" / "version.py").write_text("cuda = None\n")
    (site / "torch" / "cuda" / "__init__.py").write_text("def is_available():\n    return False\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    check = colabkit.doctor()["torch"]
    assert (check.status, check.detail) == (
        "fail",
        "PyTorch 2.3.0+cpu is a CPU-only build: it cannot use the Tesla T4.",
    )
    assert "torch" not in sys.modules
    assert dict(colabkit.info().rows())["torch"] == "torch 2.3.0+cpu (CPU-only build), sees no GPU"


def test_doctor_html_is_escaped_and_coloured():
    result = _report.Doctor(
        (
            _report.Check("gpu", "fail", "<b>lost</b>", "use <Runtime> & retry"),
            _report.Check("disk", "ok", "fine"),
        )
    )
    html = result._repr_html_()
    assert "<b>lost</b>" not in html and "&lt;b&gt;lost&lt;/b&gt;" in html
    assert "use &lt;Runtime&gt; &amp; retry" in html
    assert "FAIL" in html and "#d93025" in html
    assert "<caption style='text-align:left'>colabkit doctor: 1 ok, 0 warn, 1 fail</caption>" in html


def test_drive_probe_gives_up_on_a_hung_mount(machine, t4, drive_module, tmp_path, monkeypatch):
    import threading

    release = threading.Event()
    monkeypatch.setattr(_report, "_DRIVE_PROBE_TIMEOUT_S", 0.2)
    monkeypatch.setattr(_report, "_write_probe", lambda root: release.wait(10))
    drive_module.find_mount = lambda: _mount(tmp_path)
    started = time.monotonic()
    check = colabkit.doctor()["drive"]
    release.set()
    for t in threading.enumerate():
        if t.name == "colabkit-doctor-drive":
            t.join(5)
    assert time.monotonic() - started < 5
    assert check.status == "fail" and "did not finish within 0.2 s" in check.detail


class _Cells:
    """Every table cell (and caption) of an HTML fragment with its inline style."""

    def __init__(self, html: str) -> None:
        from html.parser import HTMLParser

        self.cells: list[tuple[str, str]] = []
        cells = self.cells

        class Parser(HTMLParser):
            def handle_starttag(self, tag, attrs):
                if tag in ("td", "th", "caption"):
                    cells.append((tag, dict(attrs).get("style") or ""))

        Parser().feed(html)


def test_every_table_of_setup_info_doctor_and_runs_aligns_left_under_any_notebook_css(tmp_path, monkeypatch):
    # JupyterLab's stylesheet right-aligns td/th and Colab's output frame centres them: only an inline style wins
    import json

    from colabkit import _history

    run = tmp_path / "proj" / "runs" / "20250101-120000-train"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": "finished", "returncode": 0, "script": "train.py"}))
    session = colabkit.setup(gpu=False, mount=False)
    doctor = _report.Doctor((_report.Check("gpu", "fail", "none", "a long fix " * 20), _report.Check("disk", "ok", "fine")))
    runs = _history.runs(tmp_path / "proj")
    for name, html in {
        "setup": session._repr_html_(),
        "info": colabkit.info()._repr_html_(),
        "doctor": doctor._repr_html_(),
        "runs": runs._repr_html_(),
        "run": runs[0]._repr_html_(),
    }.items():
        cells = _Cells(html).cells
        assert len([c for c in cells if c[0] != "caption"]) >= 2, (name, html)
        assert all("text-align:left" in style for _, style in cells), (name, cells)
    assert "<div style='max-width:90ch'><i>HINT:</i> a long fix" in doctor._repr_html_()  # wraps as one block
