"""stage() under attack and under pressure: crafted tars (link chains, hard links) on this Python, with
data_filter off, and on Debian's 3.11.2 (no data_filter); a real small tmpfs that fills up; legal names;
same-named datasets; a damaged staged copy."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

from colabkit import _extract, _stage
from colabkit.errors import StageError

DEBIAN_PYTHON = Path("/usr/bin/python3")  # Debian 12's 3.11.2: no tarfile.data_filter


def _tar(path: Path, members: list[tuple[str, str, object]], mode: str = "w") -> Path:
    """Members as (kind, name, data): ``file`` (bytes), ``dir``, ``sym`` (target), ``hard`` (link name)."""
    with tarfile.open(path, mode) as tar:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                assert isinstance(data, bytes)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE}[kind]
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind in ("sym", "hard"):
                info.linkname = str(data)
            tar.addfile(info)
    return path


# each lexically inside, together outside: x/l0 -> .. is dest itself, x/l1 -> l0/.. is dest's parent
CHAIN = [("dir", "x", None), ("sym", "x/l0", ".."), ("sym", "x/l1", "l0/..")]
CRAFTED = {
    "chain-then-file": CHAIN + [("file", "x/l1/escaped.txt", b"outside!")],
    "chain-then-hardlink": CHAIN + [("hard", "grab", "x/l1/victim.txt"), ("file", "grab", b"overwritten")],
    # each link resolves inside when it is made; the second turns the first outward
    "late-turn": [("sym", "a", "b/../escaped.txt"), ("sym", "b", ".")],
    "absolute-hardlink": [("hard", "passwd", "/etc/passwd")],
    "up-hardlink": [("hard", "grab", "../victim.txt")],
}


def _box(tmp_path: Path) -> tuple[Path, Path]:
    """(box, dest): dest inside box, and box/victim.txt the outside file an attack would reach."""
    box = tmp_path / "box"
    box.mkdir()
    (box / "victim.txt").write_bytes(b"original")
    return box, box / "dest"


def _untouched(box: Path) -> bool:
    return (box / "victim.txt").read_bytes() == b"original" and not (box / "escaped.txt").exists()


@pytest.mark.parametrize("name", list(CRAFTED))
@pytest.mark.parametrize("data_filter", ["as this Python has it", "off"])
def test_crafted_tars_never_escape_dest(tmp_path, monkeypatch, name, data_filter):
    if data_filter == "off":
        monkeypatch.setattr(_extract, "_DATA_FILTER", None)  # colabkit's own check alone
    archive = _tar(tmp_path / f"{name}.tar", CRAFTED[name])
    box, dest = _box(tmp_path)
    with pytest.raises(StageError, match="would be written outside the destination|written through the link"):
        _stage.stage(archive, dest)
    assert _untouched(box)
    assert sorted(p.name for p in box.iterdir()) == ["victim.txt"]  # no dest, no half-staged temp folder


_DEBIAN_RUN = """
import json, sys, tarfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from colabkit import _extract
from colabkit.errors import StageError
archive, dest, how = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
dest.mkdir()
result = {"python": sys.version.split()[0], "data_filter": hasattr(tarfile, "data_filter")}
try:
    if how == "colabkit":
        _extract.extract_tar(archive, dest, False)
    else:
        with tarfile.open(archive) as tar:
            tar.extractall(dest)
    result["outcome"] = "extracted"
except StageError as exc:
    result["outcome"] = "refused: " + exc.message
print(json.dumps(result))
"""


def _on_debian_python(archive: Path, dest: Path, how: str) -> dict:
    if not DEBIAN_PYTHON.exists():
        pytest.skip("Debian's python3 is not installed here (apt-get install -y python3; .ci/run does)")
    out = subprocess.run(
        [str(DEBIAN_PYTHON), "-I", "-c", _DEBIAN_RUN, str(ROOT), str(archive), str(dest), how],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("name", ["chain-then-file", "chain-then-hardlink", "late-turn"])
def test_on_debian_python_without_data_filter_colabkit_refuses_what_tarfile_lets_escape(tmp_path, name):
    archive = _tar(tmp_path / f"{name}.tar", CRAFTED[name])
    (tmp_path / "control").mkdir()
    control, plain_dest = _box(tmp_path / "control")
    plain = _on_debian_python(archive, plain_dest, "tarfile")  # the control: on this Python the attack is real
    assert plain["data_filter"] is False and plain["outcome"] == "extracted", plain
    if name == "late-turn":
        assert os.path.realpath(plain_dest / "a") == str(control / "escaped.txt")
    elif name == "chain-then-file":
        assert (control / "escaped.txt").read_bytes() == b"outside!"
    else:
        assert (control / "victim.txt").read_bytes() == b"overwritten"
    box, dest = _box(tmp_path)
    ours = _on_debian_python(archive, dest, "colabkit")
    assert ours["python"] == "3.11.2" or not ours["data_filter"], ours
    assert ours["outcome"].startswith("refused: Refusing to extract"), ours
    assert _untouched(box)


def test_links_that_stay_inside_are_kept(tmp_path):
    archive = _tar(
        tmp_path / "ok.tar",
        [
            ("dir", "v2", None),
            ("file", "v2/data.bin", b"d"),
            ("sym", "latest", "v2"),
            ("file", "latest/more.bin", b"m"),  # through a link that stays inside
            ("hard", "copy.bin", "v2/data.bin"),
        ],
    )
    dest = _stage.stage(archive, tmp_path / "local" / "ok")
    assert os.readlink(dest / "latest") == "v2"
    assert (dest / "v2/more.bin").read_bytes() == b"m"
    assert (dest / "copy.bin").stat().st_ino == (dest / "v2/data.bin").stat().st_ino


# -- legal names --------------------------------------------------------------------------------------


NAMES = {"a\\b.txt": b"backslash", "c:d.txt": b"colon", "sub/e\\f:g.txt": b"both"}


@pytest.mark.parametrize("kind", ["tar", "zip", "folder"])
def test_backslashes_and_colons_are_staged_as_they_are(tmp_path, kind):
    if kind == "tar":
        src = _tar(tmp_path / "ds.tar", [("file", n, d) for n, d in NAMES.items()])
    elif kind == "zip":
        src = tmp_path / "ds.zip"
        with zipfile.ZipFile(src, "w") as zf:
            for n, d in NAMES.items():
                zf.writestr(n, d)
    else:
        src = tmp_path / "ds"
        for n, d in NAMES.items():
            (src / n).parent.mkdir(parents=True, exist_ok=True)
            (src / n).write_bytes(d)
    dest = _stage.stage(src, tmp_path / "local" / "ds")
    for n, d in NAMES.items():
        assert (dest / n).read_bytes() == d
    assert not (dest / "a").exists() and (dest / "sub").is_dir()


# -- same folder names, another source ----------------------------------------------------------------


def test_two_datasets_with_the_same_folder_name_get_their_own_folders(tmp_path):
    for split in ("train", "val"):
        (tmp_path / f"drive/{split}/images").mkdir(parents=True)
        (tmp_path / f"drive/{split}/images/{split}.txt").write_text(split)
    train = _stage.stage(tmp_path / "drive/train/images")
    val = _stage.stage(tmp_path / "drive/val/images")
    assert train != val and train.name == "images" and val.name.startswith("images-")
    assert (train / "train.txt").read_text() == "train" and not (train / "val.txt").exists()
    assert (val / "val.txt").read_text() == "val"
    assert _stage.stage(tmp_path / "drive/train/images") == train  # each finds its own again
    assert _stage.stage(tmp_path / "drive/val/images") == val
    with pytest.raises(StageError, match="holds a copy of .*train/images, staged earlier, not of .*val/images"):
        _stage.stage(tmp_path / "drive/val/images", train)
    assert (train / "train.txt").read_text() == "train"
    assert _stage.stage(tmp_path / "drive/val/images", train, overwrite=True) == train
    assert (train / "val.txt").exists() and not (train / "train.txt").exists()


# -- a damaged staged copy ----------------------------------------------------------------------------


def test_a_damaged_copy_is_noticed_and_overwrite_restores_it(tmp_path, monkeypatch, capsys):
    src = tmp_path / "ds"
    for i in range(20):
        (src / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / f"c{i % 3}/f{i}.bin").write_bytes(bytes([i]) * 100)
    dest = _stage.stage(src, tmp_path / "local" / "ds")
    calls = []
    real = _stage.extract_tar
    monkeypatch.setattr(_stage, "extract_tar", lambda *a, **k: (calls.append(1), real(*a, **k)))
    assert _stage.stage(src, dest) == dest and calls == []  # whole: a no-op, nothing read

    (dest / "c1/f4.bin").unlink()
    assert _stage.stage(src, dest) == dest and calls == [1]  # a missing file: staged again
    assert (dest / "c1/f4.bin").read_bytes() == bytes([4]) * 100
    assert "1 entry of the staged copy" in capsys.readouterr().out

    (dest / "c2/f5.bin").write_bytes(b"edited locally")
    with pytest.raises(StageError, match="whose files changed since it was staged: 'c2/f5.bin'") as info:
        _stage.stage(src, dest)
    assert "Pass overwrite=True to restore the copy" in info.value.hint
    assert (dest / "c2/f5.bin").read_bytes() == b"edited locally"  # not touched without overwrite
    assert _stage.stage(src, dest, overwrite=True) == dest
    assert (dest / "c2/f5.bin").read_bytes() == bytes([5]) * 100


# -- a real small disk ------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs under tmp_path, unmounted after the test (also when it fails)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    point = tmp_path / "small"
    point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(point)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield point
    finally:
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _lying_tgz(path: Path, sizes: list[int]) -> Path:
    """A .tar.gz of zero-filled files (a few KiB compressed) whose gzip trailer claims 100 bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for i, size in enumerate(sizes):
            info = tarfile.TarInfo(f"part{i}.bin")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    data = bytearray(gzip.compress(raw.getvalue()))
    data[-4:] = (100).to_bytes(4, "little")  # ISIZE: "the unpacked size mod 4 GiB"
    path.write_bytes(bytes(data))
    return path


def test_a_tgz_bigger_than_the_disk_stops_before_the_member_that_does_not_fit(tmp_path, small_disk):
    src = _lying_tgz(tmp_path / "big.tar.gz", [1 << 20] * 6)  # 6 MiB of data for a 4 MiB disk
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = small_disk / "big"
    with pytest.raises(StageError, match=r"Not enough local disk to stage .*big\.tar\.gz: 'part(2|3)\.bin' \(1\.0 MiB\) does not fit") as info:
        _stage.stage(src, dest)
    err = info.value
    assert err.__cause__ is None  # refused before writing it, not a translated ENOSPC
    assert err.needed_bytes > err.free_bytes - (1 << 20) and "stage a smaller subset" in err.hint
    assert list(small_disk.iterdir()) == []  # nothing half-staged
    assert shutil.disk_usage(small_disk).free > 3 << 20
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before  # the source untouched


def test_a_raw_enospc_is_the_same_clear_error_and_leaves_nothing(tmp_path, small_disk, monkeypatch):
    src = _lying_tgz(tmp_path / "big.tar.gz", [3 << 20, 3 << 20])
    monkeypatch.setattr(_extract.Space, "take", lambda self, size, name: None)  # as if the check were wrong
    with pytest.raises(StageError, match=r"Not enough local disk to stage .*big\.tar\.gz: .* does not fit") as info:
        _stage.stage(src, small_disk / "big")
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == 28
    assert list(small_disk.iterdir()) == []


def test_a_folder_that_does_not_fit_is_refused_before_the_first_byte(tmp_path, small_disk):
    src = tmp_path / "ds"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}.bin").write_bytes(os.urandom(1 << 20))
    with pytest.raises(StageError, match=r"it needs 5\.0 MiB, .* has .* free") as info:
        _stage.stage(src, small_disk / "ds")
    assert info.value.needed_bytes == 5 << 20
    assert list(small_disk.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ds")) == ["ds"]  # nothing packed
