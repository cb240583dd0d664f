"""The ocamlfuse backend against a fake google-drive-ocamlfuse that really mounts with bindfs."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from fakes.colabvm import BIN, fuse_pid, kill_fuse, mount_table, unmount_under

import colabkit
from colabkit import _mounts
from colabkit.errors import MountError

SECRET = "GOCSPX-s3cr3t-client-secret"
CODE = "4/0AVHEtk-verification-code"
PRIVATE_KEY = "-----BEGIN PRIVATE KEY-----\nMIIEfakeKEYmaterial\n-----END PRIVATE KEY-----\n"
FSTYPE = "fuse.google-drive-ocamlfuse"


@pytest.fixture
def gd(tmp_path, monkeypatch):
    """PATH with the fake tool; the "remote" My Drive it serves; its argv log."""
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "paper.txt").write_text("draft")
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_OCAMLFUSE_BACKING", str(remote))
    monkeypatch.setenv("FAKE_OCAMLFUSE_LOG", str(tmp_path / "ocamlfuse-argv.log"))
    try:
        yield remote
    finally:
        unmount_under(tmp_path)


def _expect_code(tmp_path: Path, monkeypatch) -> None:
    """Tell the fake "Google" which code to accept, through a file, so the tool's environment stays clean."""
    (tmp_path / "expected-code").write_text(CODE)
    monkeypatch.setenv("FAKE_OCAMLFUSE_CODE_FILE", str(tmp_path / "expected-code"))


def _logs(tmp_path: Path) -> str:
    texts = [
        p.read_text() for p in [tmp_path / "ocamlfuse-argv.log", *Path.home().glob(".gdfuse/*/gdfuse.log")]
    ]
    return "\n".join(texts)


@pytest.mark.fuse
def test_service_account(gd, tmp_path):
    key = tmp_path / "key.json"
    key.write_text(
        json.dumps({"type": "service_account", "private_key": PRIVATE_KEY, "client_email": "sa@p.iam"})
    )
    point = tmp_path / "gdrive"
    m = colabkit.mount("ocamlfuse", point, service_account=key)
    assert m == _mounts.Mount("ocamlfuse", point, point, False)
    assert mount_table()[str(point)] == FSTYPE
    assert (m.root / "paper.txt").read_text() == "draft"
    logs = _logs(tmp_path)
    assert "-serviceaccountpath" in logs and str(key) in logs
    assert "MIIEfakeKEY" not in logs
    calls = logs.count("argv")
    assert (
        colabkit.mount("ocamlfuse", point, service_account=key) == m
    )  # idempotent: the tool is not run again
    assert _logs(tmp_path).count("argv") == calls
    colabkit.flush()
    assert str(point) not in mount_table()


@pytest.mark.fuse
def test_pre_authorized_state_folder(gd, tmp_path, monkeypatch):
    state = tmp_path / "gdfuse-state"
    state.mkdir()
    (state / "state").write_text("refresh_token=abc\n")
    (state / "config").write_text("verification_code=\n")
    point = tmp_path / "my gdrive"  # a space: the mount table writes it as \040
    monkeypatch.setenv("COLABKIT_OCAMLFUSE_STATE_DIR", str(state))
    m = colabkit.mount("ocamlfuse", point, label="lab")
    assert m.root == point and mount_table()[str(point)] == FSTYPE
    copied = Path.home() / ".gdfuse/lab/state"
    assert copied.read_text() == "refresh_token=abc\n"
    assert stat.S_IMODE(copied.stat().st_mode) == 0o600
    assert stat.S_IMODE(copied.parent.stat().st_mode) == 0o700
    assert _mounts.entry(point).fstype == FSTYPE
    assert colabkit.mount("ocamlfuse", point, label="lab") == m


@pytest.mark.fuse
def test_headless_keeps_secret_and_code_off_argv_logs_and_output(gd, tmp_path, monkeypatch, capsys):
    pidfile = tmp_path / "tool.pid"
    monkeypatch.setenv("FAKE_OCAMLFUSE_PIDFILE", str(pidfile))
    _expect_code(tmp_path, monkeypatch)
    seen = {}

    def fake_getpass(prompt: str) -> str:
        if "secret" in prompt:
            return SECRET
        # the tool is running now, waiting for the code on stdin: look at it from outside
        pid = int(pidfile.read_text())
        seen["cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        seen["environ"] = Path(f"/proc/{pid}/environ").read_bytes().decode()
        return CODE

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    point = tmp_path / "gdrive"
    m = colabkit.mount("ocamlfuse", point, client_id="123-abc.apps.googleusercontent.com")
    assert m.root == point and mount_table()[str(point)] == FSTYPE
    assert "-headless" in seen["cmdline"] and "123-abc.apps.googleusercontent.com" in seen["cmdline"]
    for where in (seen["cmdline"], seen["environ"], _logs(tmp_path), capsys.readouterr().out):
        assert SECRET not in where and CODE not in where
    config = Path.home() / ".gdfuse/default/config"
    assert f"client_secret={SECRET}" in config.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


@pytest.mark.fuse
def test_headless_shows_the_url(gd, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLABKIT_OCAMLFUSE_CLIENT_SECRET", SECRET)
    monkeypatch.setattr("getpass.getpass", lambda prompt: CODE)
    colabkit.mount("ocamlfuse", tmp_path / "gdrive", client_id="123-abc.apps.googleusercontent.com")
    out = capsys.readouterr().out
    assert "https://accounts.google.com/o/oauth2/auth?client_id=123-abc.apps.googleusercontent.com" in out
    assert "code=" in out and SECRET not in out


@pytest.mark.fuse
def test_headless_wrong_code(gd, tmp_path, monkeypatch, capsys):
    _expect_code(tmp_path, monkeypatch)
    monkeypatch.setenv("COLABKIT_OCAMLFUSE_CLIENT_SECRET", SECRET)
    monkeypatch.setattr("getpass.getpass", lambda prompt: "4/wrong-code")
    point = tmp_path / "gdrive"
    with pytest.raises(MountError, match="refused the verification code") as info:
        colabkit.mount("ocamlfuse", point, client_id="123-abc.apps.googleusercontent.com")
    assert info.value.reason == "auth" and "new code" in info.value.hint
    assert "4/wrong-code" not in str(info.value)
    assert str(point) not in mount_table()


def test_no_credentials(gd, tmp_path):
    with pytest.raises(MountError, match="no credentials for label 'default'") as info:
        colabkit.mount("ocamlfuse", tmp_path / "gdrive")
    assert info.value.reason == "no_auth"
    for word in ("service_account=", "state_dir=", "client_id="):
        assert word in info.value.hint
    # the fix is in the hint itself, for the notebook and the terminal (no pointer to a docs folder)
    assert info.value.hint.endswith(
        "In a terminal: `colabkit mount --method ocamlfuse` with --service-account, --state-dir or --client-id."
    )
    assert "docs/" not in info.value.hint


def test_a_failed_sign_in_says_how_to_authorize_again(gd, tmp_path):
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "authorized_user", "refresh_token": "x"}))  # not a service account key
    with pytest.raises(MountError, match="could not mount .* \\(exit 1\\): Error: not a service account key") as info:
        colabkit.mount("ocamlfuse", tmp_path / "gdrive", service_account=key)
    assert info.value.reason == "failed"
    assert info.value.hint == (
        "Read ~/.gdfuse/default/gdfuse.log; if the credentials expired, authorize again: mount with "
        "client_id=... (you paste a new code) or a freshly authorized state_dir=..."
    )


def test_missing_tool_off_ubuntu(tmp_path, monkeypatch):
    sysroot = tmp_path / "box"
    (sysroot / "etc").mkdir(parents=True)
    (sysroot / "etc/os-release").write_text('ID=fedora\nNAME="Fedora Linux"\n')
    monkeypatch.setenv("COLABKIT_SYSROOT", str(sysroot))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with pytest.raises(MountError, match="google-drive-ocamlfuse is not installed") as info:
        colabkit.mount("ocamlfuse", tmp_path / "gdrive")
    assert info.value.reason == "missing_tool"
    assert "add-apt-repository ppa:alessandro-strada/ppa" in info.value.hint
    assert "apt-get install google-drive-ocamlfuse" in info.value.hint


@pytest.mark.fuse
def test_missing_tool_is_installed_from_the_ppa_on_ubuntu(gd, tmp_path, monkeypatch):
    sysroot = tmp_path / "box"
    (sysroot / "etc").mkdir(parents=True)
    (sysroot / "etc/os-release").write_text("ID=ubuntu\nID_LIKE=debian\n")
    monkeypatch.setenv("COLABKIT_SYSROOT", str(sysroot))
    tools = tmp_path / "sbin"
    tools.mkdir()
    apt_log = tmp_path / "apt.log"
    fake = (
        "#!/bin/sh\n"
        f'echo "$(basename "$0") $*" >> {apt_log}\n'
        'case "$*" in *"install -y -qq google-drive-ocamlfuse"*) '
        f"cp {BIN}/google-drive-ocamlfuse {tools}/ ;; esac\n"
    )
    for name in ("apt-get", "add-apt-repository"):
        (tools / name).write_text(fake)
        (tools / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}/usr/bin:/bin")
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account", "private_key": PRIVATE_KEY}))
    m = colabkit.mount("ocamlfuse", tmp_path / "gdrive", service_account=key)
    assert mount_table()[str(m.mountpoint)] == FSTYPE
    assert apt_log.read_text().splitlines() == [
        "add-apt-repository -y ppa:alessandro-strada/ppa",
        "apt-get update -qq",
        "apt-get install -y -qq google-drive-ocamlfuse",
    ]


def test_non_empty_mountpoint(gd, tmp_path):
    point = tmp_path / "gdrive"
    point.mkdir()
    (point / "notes.md").write_text("keep me")
    with pytest.raises(MountError, match="'notes.md'") as info:
        colabkit.mount("ocamlfuse", point)
    assert info.value.reason == "not_empty"
    assert (point / "notes.md").read_text() == "keep me"


@pytest.mark.fuse
def test_dead_ocamlfuse_mount_is_remounted(gd, tmp_path):
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account", "private_key": PRIVATE_KEY}))
    point = tmp_path / "gdrive"
    colabkit.mount("ocamlfuse", point, service_account=key)
    kill_fuse(point)
    m = colabkit.mount("ocamlfuse", point, service_account=key)
    assert (m.root / "paper.txt").read_text() == "draft"


def _key(tmp_path: Path) -> Path:
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account", "private_key": PRIVATE_KEY}))
    return key


@pytest.mark.fuse
def test_secret_from_the_environment_does_not_reach_the_daemon(gd, tmp_path, monkeypatch):
    monkeypatch.setenv("COLABKIT_OCAMLFUSE_CLIENT_SECRET", SECRET)
    monkeypatch.setattr("getpass.getpass", lambda prompt: CODE)
    point = tmp_path / "gdrive"
    colabkit.mount("ocamlfuse", point, client_id="123-abc.apps.googleusercontent.com")
    # the FUSE process outlives the call, as google-drive-ocamlfuse's daemon does
    environ = Path(f"/proc/{fuse_pid(point)}/environ").read_bytes()
    assert SECRET.encode() not in environ and b"COLABKIT_OCAMLFUSE_CLIENT_SECRET" not in environ
    assert "COLABKIT_OCAMLFUSE_CLIENT_SECRET" not in os.environ  # nor run()'s training children
    assert f"client_secret={SECRET}" in (Path.home() / ".gdfuse/default/config").read_text()


@pytest.mark.fuse
def test_state_dir_that_is_the_label_folder_itself(gd, tmp_path):
    label_dir = Path.home() / ".gdfuse/default"
    label_dir.mkdir(parents=True)
    (label_dir / "state").write_text("refresh_token=abc\n")
    point = tmp_path / "gdrive"
    m = colabkit.mount("ocamlfuse", point, state_dir="~/.gdfuse/default")
    assert mount_table()[str(point)] == FSTYPE and (m.root / "paper.txt").read_text() == "draft"
    assert (label_dir / "state").read_text() == "refresh_token=abc\n"
    assert stat.S_IMODE(label_dir.stat().st_mode) == 0o700


def test_state_dir_that_cannot_be_copied(gd, tmp_path):
    state = tmp_path / "gdfuse-state"
    state.mkdir()
    (state / "state").write_text("refresh_token=abc\n")
    (Path.home() / ".gdfuse").write_text("a file where the folder should be")
    with pytest.raises(
        MountError, match=f"could not copy the google-drive-ocamlfuse state folder {state}"
    ) as info:
        colabkit.mount("ocamlfuse", tmp_path / "gdrive", state_dir=state)
    assert info.value.reason == "no_auth" and "write ~/.gdfuse/" in info.value.hint
    assert isinstance(info.value.__cause__, OSError)


@pytest.mark.fuse
def test_tool_that_hangs_is_a_timeout(gd, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_OCAMLFUSE_HANG_S", "30")
    point = tmp_path / "gdrive"
    with pytest.raises(MountError, match=f"did not finish mounting {point} within 0.5 s") as info:
        colabkit.mount("ocamlfuse", point, service_account=_key(tmp_path), timeout=0.5)
    assert info.value.reason == "timeout" and "timeout=300" in info.value.hint
    assert str(point) not in mount_table()


def test_install_that_hangs_is_a_missing_tool_error(tmp_path, monkeypatch):
    from colabkit import _ocamlfuse

    sysroot = tmp_path / "box"
    (sysroot / "etc").mkdir(parents=True)
    (sysroot / "etc/os-release").write_text("ID=ubuntu\n")
    monkeypatch.setenv("COLABKIT_SYSROOT", str(sysroot))
    tools = tmp_path / "sbin"
    tools.mkdir()
    for name in ("apt-get", "add-apt-repository"):
        (tools / name).write_text("#!/bin/sh\nexec sleep 30\n")  # exec: the pipes close when it is killed
        (tools / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}/usr/bin:/bin")
    monkeypatch.setattr(_ocamlfuse, "INSTALL_TIMEOUT_S", 0.5)
    with pytest.raises(
        MountError, match="installing google-drive-ocamlfuse hung at 'add-apt-repository"
    ) as info:
        colabkit.mount("ocamlfuse", tmp_path / "gdrive", service_account=_key(tmp_path))
    assert (
        info.value.reason == "missing_tool"
        and "apt-get install -y -qq google-drive-ocamlfuse" in info.value.hint
    )


@pytest.mark.fuse
def test_readonly_must_match_the_live_mount(gd, tmp_path):
    point = tmp_path / "gdrive"
    key = _key(tmp_path)
    colabkit.mount("ocamlfuse", point, service_account=key)
    with pytest.raises(MountError, match="already mounted read-write") as info:
        colabkit.mount("ocamlfuse", point, service_account=key, readonly=True)
    assert info.value.reason == "readonly"
    assert "colabkit.mount('ocamlfuse', readonly=True, force=True)" in info.value.hint
    m = colabkit.mount("ocamlfuse", point, service_account=key, readonly=True, force=True)
    assert m.readonly and "ro" in _mounts.entry(point).options


@pytest.mark.fuse
def test_flush_of_a_dead_ocamlfuse_mount_says_so(gd, tmp_path):
    point = tmp_path / "gdrive"
    key = _key(tmp_path)
    colabkit.mount("ocamlfuse", point, service_account=key)
    kill_fuse(point)
    with pytest.raises(MountError, match="is dead") as info:
        colabkit.flush()
    assert info.value.reason == "dead" and info.value.method == "ocamlfuse"
    assert "colabkit.mount('ocamlfuse', force=True), then call colabkit.flush()" in info.value.hint


@pytest.mark.fuse
def test_a_hung_ocamlfuse_mount_is_reported_quickly_and_restarted_with_force(gd, tmp_path):
    import time

    from fakes.colabvm import hung_fuse

    point = tmp_path / "gdrive"
    key = _key(tmp_path)
    colabkit.mount("ocamlfuse", point, service_account=key)
    (point / "work").mkdir()
    os.chdir(point / "work")
    with hung_fuse(point):
        started = time.monotonic()
        with pytest.raises(MountError) as info:
            colabkit.mount("ocamlfuse", point, service_account=key)
        assert time.monotonic() - started < 6
        assert info.value.reason == "hung" and "colabkit.mount('ocamlfuse', force=True)" in info.value.hint
        m = colabkit.mount("ocamlfuse", point, service_account=key, force=True)
        assert _mounts.health(point).state == "live" and (m.root / "paper.txt").read_text() == "draft"
        assert os.getcwd() == str(point / "work")
    os.chdir(tmp_path)
