"""Who drives a Colab kernel: the signals a kernel sees (docs/front-ends.md), the probe's memory, and the fixes."""

from __future__ import annotations

import builtins

import pytest

from colabkit import _frontend, _runtime
from colabkit.errors import MountError


@pytest.fixture(autouse=True)
def colab(monkeypatch):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260101-060000_RC00")
    _runtime.forget_front_end()
    yield
    _runtime.forget_front_end()


def _kernel(monkeypatch, *, metadata=None, session="client-1", cls="Shell", module="google.colab._shell"):
    shell_cls = type(cls, (), {"__module__": module})
    shell = shell_cls()
    shell.parent_header = {
        "header": {"msg_type": "execute_request", "session": session, "username": "username"},
        "metadata": metadata if metadata is not None else {},
        "content": {"code": "colabkit.setup()"},
    }
    monkeypatch.setattr(builtins, "get_ipython", lambda: shell, raising=False)
    return shell


def test_a_shell_on_the_vm_has_no_front_end():
    rt = _runtime.detect_runtime()
    assert rt.kind == "colab" and rt.front_end == "terminal" and rt.has_browser is False


def test_vscode_sends_its_cell_uri_with_every_cell(monkeypatch):
    _kernel(monkeypatch, metadata={"cellId": "vscode-notebook-cell:/home/me/train.ipynb#W1sZmlsZQ%3D%3D"})
    rt = _runtime.detect_runtime()
    assert rt.front_end == "vscode"
    assert rt.describe().startswith("Colab (release-colab_20260101-060000_RC00), driven by VS Code")
    assert _frontend.front_end() == "vscode"  # established without a probe


def test_vscode_interactive_window_too(monkeypatch):
    _kernel(monkeypatch, metadata={"cellId": "vscode-interactive-input:/InteractiveInput-1"})
    assert _runtime.detect_runtime().front_end == "vscode"


def test_a_kernel_without_vscode_marks_is_not_established(monkeypatch):
    _kernel(monkeypatch, metadata={"colab": {"cellId": "abc"}})
    rt = _runtime.detect_runtime()
    assert rt.front_end is None and rt.has_browser is None
    assert _frontend.front_end(probe=False) is None


def test_a_probe_answer_is_kept_per_client_session(monkeypatch):
    shell = _kernel(monkeypatch, session="client-1")
    _runtime.remember_front_end("headless")
    assert _runtime.detect_runtime().front_end == "headless"
    assert "no browser (google-colab-cli or another kernel client)" in _runtime.detect_runtime().describe()
    shell.parent_header["header"]["session"] = "client-2"  # another client connected to the same kernel
    assert _runtime.detect_runtime().front_end is None
    _runtime.remember_front_end("browser")
    assert _runtime.detect_runtime().has_browser is True


def test_the_environment_overrides_the_detection(monkeypatch):
    _kernel(monkeypatch, metadata={"cellId": "vscode-notebook-cell:/x.ipynb#a"})
    monkeypatch.setenv("COLABKIT_FRONTEND", "browser")
    assert _runtime.detect_runtime().front_end == "browser"
    monkeypatch.setenv("COLABKIT_FRONTEND", "nonsense")
    assert _runtime.detect_runtime().front_end == "vscode"


def test_off_colab_there_is_no_front_end(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG")
    _kernel(monkeypatch, metadata={"cellId": "vscode-notebook-cell:/x.ipynb#a"}, cls="ZMQInteractiveShell", module="ipykernel.zmqshell")
    rt = _runtime.detect_runtime()
    assert rt.kind == "jupyter" and rt.front_end is None
    assert _frontend.front_end() is None


def test_remember_refuses_an_unknown_front_end():
    with pytest.raises(ValueError, match="front_end='web': use one of"):
        _runtime.remember_front_end("web")


def test_kernel_get_parent_is_read_when_parent_header_is_not_there(monkeypatch):
    class Kernel:
        def get_parent(self):
            return {"header": {"session": "s"}, "metadata": {"cellId": "vscode-notebook-cell:/a.ipynb#b"}}

    shell = type("Shell", (), {"__module__": "google.colab._shell"})()
    shell.kernel = Kernel()
    monkeypatch.setattr(builtins, "get_ipython", lambda: shell, raising=False)
    assert _runtime.detect_runtime().front_end == "vscode"


@pytest.mark.parametrize(
    ("found", "start"),
    [
        ("vscode", 'VS Code asks "Permit ... to access your Google Drive files?": choose Connect to Google Drive, sign in'),
        ("headless", "From your own machine run `colab drivemount /content/drive` (google-colab-cli; add -s NAME for"),
        ("terminal", "Mount Drive from a notebook cell in the browser (colabkit.mount()), or with google-colab-cli run `colab drivemount`"),
    ],
)
def test_mount_fix_per_front_end(found, start):
    api, cli = _frontend.mount_fix(found)
    assert api.startswith(start) and cli.startswith(start)
    assert api.endswith("then run this cell again: colabkit finds the mount and goes on")
    assert cli.endswith("then run this command again: colabkit finds the mount and goes on")
    assert _frontend.needs_browser(found)  # Colab's secrets need its web UI in all three


def test_vscodes_fix_names_its_command_as_the_way_round():
    api, _ = _frontend.mount_fix("vscode")
    assert 'run "Colab: Mount Google Drive to Server..." and run the cell it adds' in api
    assert "the Colab extension 0.2.1 or later asks; update an older one" in api


def test_who_answers_drives_consent():
    assert [_frontend.answers_consent(f) for f in ("browser", None, "vscode", "headless", "terminal")] == [
        True, True, True, False, False,
    ]  # fmt: skip


def test_a_browser_needs_nothing():
    assert not _frontend.needs_browser("browser") and not _frontend.needs_browser(None)


# -- mount() where nobody can answer (through the fake google.colab) ---------------------------------------


def _mount_calls(vm):
    return [c for c in vm.calls() if c.startswith(("drive.mount", "blocking_request request_auth"))]


@pytest.mark.fuse
def test_mount_in_a_vscode_kernel_goes_through_the_extensions_dialog(vm, monkeypatch, capsys):
    import colabkit

    monkeypatch.delenv("COLABKIT_FRONTEND")
    monkeypatch.setenv("FAKE_COLAB_FRONTEND", "vscode")  # answers request_auth only, as colab-vscode 0.2.1+ does
    _kernel(monkeypatch, metadata={"cellId": "vscode-notebook-cell:/home/me/train.ipynb#W1"})
    m = colabkit.mount()
    assert m.method == "drive" and (vm.mountpoint / "MyDrive").is_dir()
    assert f"colabkit: mounting Drive at {vm.mountpoint}: VS Code asks \"Permit ... to access your Google Drive" in (
        capsys.readouterr().out
    )
    assert "blocking_request request_auth timeout_sec=120" in vm.calls()
    assert not any(c.startswith("send_request") for c in vm.calls())  # established without a probe
    colabkit.flush()


def test_a_dismissed_vscode_dialog_says_what_to_click(vm, monkeypatch):
    import colabkit

    monkeypatch.delenv("COLABKIT_FRONTEND")
    monkeypatch.setenv("FAKE_COLAB_FRONTEND", "vscode")
    monkeypatch.setenv("FAKE_COLAB_AUTH", "refuse")  # the extension replies "User cancelled dfs_ephemeral authorization"
    _kernel(monkeypatch, metadata={"cellId": "vscode-notebook-cell:/home/me/train.ipynb#W1"})
    with pytest.raises(MountError) as err:
        colabkit.mount()
    exc = err.value
    assert (exc.reason, exc.method, exc.mountpoint) == ("credentials", "drive", str(vm.mountpoint))
    assert exc.message == (
        "Google Drive was not connected: the consent dialog in VS Code was dismissed or its sign-in failed"
    )
    assert exc.hint.startswith(
        'Run the cell again; when VS Code asks "Permit ... to access your Google Drive files?" choose Connect to '
        "Google Drive, sign in in the browser it opens"
    )
    assert exc.hint.endswith("then click Continue in VS Code.")
    assert [c.split(" ", 2)[:2] for c in _mount_calls(vm)] == [
        ["drive.mount", str(vm.mountpoint)], ["blocking_request", "request_auth"],
    ]  # fmt: skip


def test_mount_where_no_browser_answers_the_probe(vm, monkeypatch):
    import colabkit

    monkeypatch.delenv("COLABKIT_FRONTEND")
    monkeypatch.setenv("FAKE_COLAB_FRONTEND", "none")
    _kernel(monkeypatch)
    with pytest.raises(MountError) as err:
        colabkit.mount()
    assert err.value.reason == "no_browser"
    assert "google-colab-cli" in err.value.message
    assert err.value.hint.startswith(f"From your own machine run `colab drivemount {vm.mountpoint}`")
    assert vm.calls() == ["send_request cell_javascript_eval", "read_reply_from_input cell_javascript_eval timeout_sec=3"]
    with pytest.raises(MountError):
        colabkit.mount()  # the answer is kept: no second probe
    assert len([c for c in vm.calls() if c.startswith("send_request")]) == 1


def test_mount_from_a_shell_on_the_vm(vm, monkeypatch):
    import colabkit

    monkeypatch.delenv("COLABKIT_FRONTEND")
    with pytest.raises(MountError) as err:
        colabkit.mount()
    assert err.value.message.endswith("and this is no notebook kernel but a shell on the Colab VM")
    assert "`colab drivemount`" in err.value.hint
    assert err.value.render("cli").endswith("then run this command again: colabkit finds the mount and goes on")


@pytest.mark.fuse
def test_a_browser_answers_the_probe_and_drive_mounts(vm, monkeypatch):
    import colabkit

    monkeypatch.delenv("COLABKIT_FRONTEND")
    _kernel(monkeypatch)
    m = colabkit.mount()
    assert m.method == "drive" and (vm.mountpoint / "MyDrive").is_dir()
    assert vm.calls()[:2] == ["send_request cell_javascript_eval", "read_reply_from_input cell_javascript_eval timeout_sec=3"]
    assert _runtime.detect_runtime().front_end == "browser"
    colabkit.flush()


@pytest.mark.fuse
def test_a_drive_mounted_by_the_vscode_command_is_found(vm, monkeypatch):
    import colabkit

    first = colabkit.mount()  # as the cell "Colab: Mount Google Drive to Server..." adds would
    monkeypatch.delenv("COLABKIT_FRONTEND")
    _kernel(monkeypatch, metadata={"cellId": "vscode-notebook-cell:/home/me/train.ipynb#W2"})
    assert colabkit.mount() == first  # a live mount needs nobody
    colabkit.flush()


def test_colabkit_mount_in_a_shell_on_the_vm_fails_at_once(vm):
    import subprocess
    import sys

    from conftest import child_env

    env = child_env()
    env.pop("COLABKIT_FRONTEND")
    out = subprocess.run([sys.executable, "-m", "colabkit", "mount"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith(
        "colabkit mount: Drive cannot be mounted from here: drive.mount asks a browser for consent, and this is no "
        "notebook kernel but a shell on the Colab VM\nHINT: Mount Drive from a notebook cell in the browser"
    )
    assert out.stderr.rstrip().endswith("then run this command again: colabkit finds the mount and goes on")
    assert vm.calls() == []


def test_setup_without_a_browser_stops_at_drive_before_the_slow_steps(vm, monkeypatch, capsys):
    import colabkit
    from colabkit import _gpu

    checked = []
    monkeypatch.setattr(_gpu, "require_gpu", lambda *a, check_torch=False, **k: checked.append(check_torch))
    monkeypatch.delenv("COLABKIT_FRONTEND")
    monkeypatch.setenv("FAKE_COLAB_FRONTEND", "none")  # colab exec of google-colab-cli: nobody answers
    monkeypatch.setenv("FAKE_COLAB_SECRETS", '{"HF_TOKEN": "hf_never_asked_for_1234"}')
    _kernel(monkeypatch)
    with pytest.raises(MountError) as err:
        colabkit.setup("test", secrets=["HF_TOKEN"])
    assert err.value.reason == "no_browser"
    assert err.value.hint.startswith("From your own machine run `colab drivemount")
    assert checked == [False]  # NVML only: torch's check (seconds) never began, nor pip, nor the secrets
    assert not any("GetSecret" in c for c in vm.calls())
    assert "installing requirements" not in capsys.readouterr().out


@pytest.mark.fuse
def test_setup_in_vscode_mounts_first_and_skips_colab_secrets_at_once(vm, monkeypatch, capsys):
    import colabkit
    from colabkit import _gpu

    steps = []
    monkeypatch.setattr(_gpu, "require_gpu", lambda *a, check_torch=False, **k: steps.append(("gpu", check_torch)))
    monkeypatch.delenv("COLABKIT_FRONTEND")
    monkeypatch.setenv("FAKE_COLAB_FRONTEND", "vscode")
    monkeypatch.setenv("FAKE_COLAB_SECRETS", '{"HF_TOKEN": "hf_in_the_panel_1234"}')
    monkeypatch.setenv("HF_TOKEN", "hf_from_the_environment_5678")
    _kernel(monkeypatch, metadata={"cellId": "vscode-notebook-cell:/home/me/train.ipynb#W3"})
    (vm.mydrive / "test").mkdir(parents=True)
    session = colabkit.setup("test", secrets=["HF_TOKEN"], install=False)
    try:
        assert session.mount is not None and session.mount.method == "drive"
        assert session.secrets.sources() == {"HF_TOKEN": "env"}
        assert not any("GetSecret" in c for c in vm.calls())  # Colab secrets skipped: VS Code never answers them
        assert steps == [("gpu", False), ("gpu", True)]  # torch's check after Drive's consent
        out = capsys.readouterr().out
        assert out.index("VS Code asks") < out.index("\nDrive    drive at")
        assert "hf_from_the_environment_5678" not in out
    finally:
        colabkit.flush()


def test_a_mount_that_times_out_in_vscode_names_its_dialog_not_a_browser_popup(monkeypatch, tmp_path):
    from colabkit import _drive, _remount

    monkeypatch.setenv("COLABKIT_FRONTEND", "vscode")
    err = _drive._timeout_error(tmp_path / "drive", _remount.Attempts(240.0), [120.0, 120.0], drivefs=False)
    assert err.reason == "timeout" and err.message.endswith("before Drive was mounted (timeout=240 s in all)")
    assert err.hint.startswith("VS Code's consent dialog was not answered in time. VS Code asks \"Permit ...")
    assert "Runtime → Restart session" not in err.hint and "popup" not in err.hint
    monkeypatch.setenv("COLABKIT_FRONTEND", "browser")
    err = _drive._timeout_error(tmp_path / "drive", _remount.Attempts(240.0), [120.0, 120.0], drivefs=False)
    assert err.hint.startswith("Drive did not answer in time: run the cell again, and answer the sign-in popup")
