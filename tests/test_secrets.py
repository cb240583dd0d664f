"""Secrets: the order of the sources, the errors that name the fix, the .env file, and the masker that keeps a
value off the screen and out of the log even when it arrives split across two reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import child_env

from colabkit import _run, _runtime, _secrets
from colabkit.errors import ColabkitWarning, RunFailed, SecretNotFound

TOKEN = "hf_QmVyeVNlY3JldFRva2VuMTIz"
OTHER = "wandb-7f3c9a1e0b"


@pytest.fixture(autouse=True)
def _forget():
    _secrets.forget()
    _runtime.forget_front_end()
    yield
    _secrets.forget()
    _runtime.forget_front_end()


def _source(values, calls=None, status="missing"):
    def ask(name):
        if calls is not None:
            calls.append(name)
        if name in values:
            return _secrets.Answer("ok", values[name], "test")
        return _secrets.Answer(status, detail="not here")

    return ask


TERMINAL = _runtime.Runtime(kind="terminal")


# -- the masker --------------------------------------------------------------------------------------


def test_masker_hides_a_value_split_at_every_point():
    text = f"step 1 token={TOKEN} done\n"
    for cut in range(len(text) + 1):
        m = _secrets.Masker([TOKEN])
        shown = m.feed(text[:cut]) + m.feed(text[cut:]) + m.flush()
        assert shown == "step 1 token=*** done\n", cut


def test_masker_hides_a_value_fed_one_character_at_a_time():
    m = _secrets.Masker([TOKEN, OTHER])
    text = f"{TOKEN}{OTHER} and {TOKEN[:5]} alone\n"
    shown = "".join(m.feed(ch) for ch in text) + m.flush()
    assert shown == f"****** and {TOKEN[:5]} alone\n"
    assert TOKEN not in shown and OTHER not in shown


def test_masker_holds_back_only_what_could_begin_a_value():
    m = _secrets.Masker([TOKEN])
    assert m.feed("loss 0.25 h") == "loss 0.25 "  # 'h' may begin the token
    assert m.feed("ello\n") == "hello\n"
    assert m.feed("no prefix at the end\n") == "no prefix at the end\n"
    assert m.flush() == ""


def test_masker_prefers_the_longer_of_two_overlapping_values():
    m = _secrets.Masker(["abcdef", "abcdefgh"])
    assert m.mask("x abcdefgh y abcdef z") == "x *** y *** z"


def test_masker_without_values_passes_everything():
    m = _secrets.Masker([])
    assert not m
    assert m.feed("anything h") == "anything h" and m.flush() == ""


# -- resolving --------------------------------------------------------------------------------------


def test_the_first_source_that_has_it_wins():
    calls = []
    found = _secrets.resolve(
        ["HF_TOKEN", "WANDB_API_KEY"],
        sources=[("colab", _source({"HF_TOKEN": TOKEN}, calls)), ("env", _source({"HF_TOKEN": "x", "WANDB_API_KEY": OTHER}))],
        runtime=TERMINAL,
    )
    assert found.env() == {"HF_TOKEN": TOKEN, "WANDB_API_KEY": OTHER}
    assert found.sources() == {"HF_TOKEN": "colab", "WANDB_API_KEY": "env"}
    assert calls == ["HF_TOKEN", "WANDB_API_KEY"]
    assert found.describe() == "HF_TOKEN (Colab secrets), WANDB_API_KEY (the environment)"


def test_no_value_in_any_repr_or_pickle_of_what_was_found():
    found = _secrets.resolve(["HF_TOKEN"], sources=[("env", _source({"HF_TOKEN": TOKEN}))], runtime=TERMINAL)
    assert TOKEN not in repr(found) and TOKEN not in str(found.items[0]) and TOKEN not in repr(found.items)
    assert repr(found.items[0]) == "<Secret HF_TOKEN from the environment>"
    assert found.mask(f"--token {TOKEN}") == "--token ***"


def test_a_missing_secret_names_every_source_and_never_a_value(tmp_path):
    with pytest.raises(SecretNotFound) as err:
        _secrets.resolve(
            ["HF_TOKEN"],
            sources=[("env", _source({"OTHER": TOKEN})), ("dotenv", _source({}))],
            runtime=TERMINAL,
            project=tmp_path,
        )
    exc = err.value
    assert isinstance(exc, KeyError)
    assert exc.name == "HF_TOKEN"
    assert exc.tried == (("env", "not here"), ("dotenv", "not here"))
    assert exc.message == "secret HF_TOKEN was not found (the environment: not here; .env: not here)"
    assert exc.hint == (
        f"Set it in the environment (export HF_TOKEN=...) or put HF_TOKEN=... in {tmp_path / '.env'} (chmod 600 it; "
        "colabkit reads it, never copies or commits it), or set os.environ['HF_TOKEN'] = getpass.getpass() in a cell."
    )
    assert exc.cli_hint == (
        f"Set it in the environment (export HF_TOKEN=... first) or put HF_TOKEN=... in {tmp_path / '.env'} (chmod 600 "
        "it; colabkit reads it, never copies or commits it)."
    )  # said once
    assert TOKEN not in str(exc)


@pytest.mark.parametrize(
    ("runtime", "tried", "start"),
    [
        (_runtime.Runtime(kind="kaggle"), (), "In the notebook editor open Add-ons → Secrets, add HF_TOKEN and tick it"),
        (_runtime.Runtime(kind="colab", front_end="browser"), (), "Add it in Colab's Secrets panel (the key icon"),
        (_runtime.Runtime(kind="colab", front_end="vscode"), (), "Colab secrets can only be read from the Colab web UI, not from VS Code: put"),
        (_runtime.Runtime(kind="colab", front_end="headless"), (), "Colab secrets can only be read from the Colab web UI. Upload a .env file instead (google-colab-cli: colab upload .env"),
        (
            _runtime.Runtime(kind="colab", front_end="browser"),
            (("colab", _secrets.Answer("no_access", detail="in Colab secrets, but this notebook has no access to it")),),
            "Open the key icon (Secrets) in Colab's left sidebar and turn on Notebook access for HF_TOKEN",
        ),
    ],
)
def test_the_fix_fits_the_runtime_and_front_end(tmp_path, runtime, tried, start):
    sources = [(name, (lambda n, a=answer: a)) for name, answer in tried] + [("env", _source({}))]
    with pytest.raises(SecretNotFound) as err:
        _secrets.resolve(["HF_TOKEN"], sources=sources, runtime=runtime, project=tmp_path)
    assert err.value.hint.startswith(start)


def test_a_source_that_breaks_counts_as_not_having_it():
    def broken(name):
        raise RuntimeError(f"boom {TOKEN}")

    found = _secrets.resolve(["HF_TOKEN"], sources=[("kaggle", broken), ("env", _source({"HF_TOKEN": TOKEN}))], runtime=TERMINAL)
    assert found.sources() == {"HF_TOKEN": "env"}


@pytest.mark.parametrize("bad", ["", "HF TOKEN", "1X", "HF-TOKEN", None])
def test_names_must_be_environment_names(bad):
    with pytest.raises(ValueError, match="use an environment variable name such as 'HF_TOKEN'"):
        _secrets.resolve([bad], sources=[], runtime=TERMINAL)


def test_a_single_string_is_refused_with_the_list_form():
    with pytest.raises(TypeError, match=r"pass a list of names, e\.g\. secrets=\['HF_TOKEN'\]"):
        _secrets.resolve("HF_TOKEN", sources=[], runtime=TERMINAL)


def test_a_short_value_is_noted_once(capsys):
    _secrets.resolve(["PIN"], sources=[("env", _source({"PIN": "1234"}))], runtime=TERMINAL)
    _secrets.resolve(["PIN"], sources=[("env", _source({"PIN": "1234"}))], runtime=TERMINAL)
    out = capsys.readouterr().out
    assert out.count("PIN is only 4 characters long") == 1
    assert "1234" not in out


# -- the default sources ------------------------------------------------------------------------------


def test_default_sources_per_runtime(tmp_path):
    kinds = lambda rt: [name for name, _ in _secrets.default_sources(rt, tmp_path)]  # noqa: E731
    assert kinds(_runtime.Runtime(kind="colab")) == ["colab", "env", "dotenv"]
    assert kinds(_runtime.Runtime(kind="kaggle")) == ["kaggle", "env", "dotenv"]
    assert kinds(TERMINAL) == ["env", "dotenv"]


@pytest.mark.parametrize("front_end", ["vscode", "headless", "terminal"])
def test_colab_secrets_are_skipped_at_once_without_a_browser(monkeypatch, tmp_path, front_end):
    monkeypatch.setenv("COLABKIT_FRONTEND", front_end)
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260101-060000_RC00")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    rt = _runtime.detect_runtime()
    found = _secrets.resolve(["HF_TOKEN"], runtime=rt, project=tmp_path)  # _colab is never asked
    assert found.sources() == {"HF_TOKEN": "env"}
    with pytest.raises(SecretNotFound) as err:
        _secrets.resolve(["WANDB_API_KEY"], runtime=rt, project=tmp_path)
    assert err.value.tried[0][0] == "colab"
    assert err.value.tried[0][1].startswith("Colab secrets need the Colab web UI, and ")


def test_environment_source_reads_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert _secrets.resolve(["HF_TOKEN"], runtime=TERMINAL, project=tmp_path).env() == {"HF_TOKEN": TOKEN}
    monkeypatch.setenv("HF_TOKEN", OTHER)
    assert _secrets.resolve(["HF_TOKEN"], runtime=TERMINAL, project=tmp_path).env() == {"HF_TOKEN": OTHER}


# -- .env -----------------------------------------------------------------------------------------


def _dotenv(folder, text, mode=0o600):
    path = folder / ".env"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_dotenv_forms(tmp_path):
    path = _dotenv(
        tmp_path,
        "# a comment\n"
        f"HF_TOKEN={TOKEN}\n"
        "export WANDB_API_KEY='quoted # not a comment'\n"
        'MULTI="two\\nlines"\n'
        "PLAIN=value # comment\n"
        "not a line\n"
        "1BAD=x\n"
        "EMPTY=\n",
    )
    assert _secrets.read_dotenv(path) == {
        "HF_TOKEN": TOKEN,
        "WANDB_API_KEY": "quoted # not a comment",
        "MULTI": "two\nlines",
        "PLAIN": "value",
        "EMPTY": "",
    }


def test_dotenv_is_the_last_source(monkeypatch, tmp_path):
    _dotenv(tmp_path, f"HF_TOKEN=from-file-{OTHER}\nWANDB_API_KEY={OTHER}\n")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    found = _secrets.resolve(["HF_TOKEN", "WANDB_API_KEY"], runtime=TERMINAL, project=tmp_path)
    assert found.env() == {"HF_TOKEN": TOKEN, "WANDB_API_KEY": OTHER}
    assert found.items[1].where == str(tmp_path / ".env")


def test_a_world_readable_dotenv_is_warned_about_once(tmp_path):
    path = _dotenv(tmp_path, f"HF_TOKEN={TOKEN}\n", mode=0o644)
    with pytest.warns(ColabkitWarning) as caught:
        _secrets.resolve(["HF_TOKEN"], runtime=TERMINAL, project=tmp_path)
        _secrets.resolve(["HF_TOKEN"], runtime=TERMINAL, project=tmp_path)
    assert len(caught) == 1
    assert str(caught[0].message) == (
        f"{path} holds secrets and every user of this machine may read it (mode -rw-r--r--): run chmod 600 {path}"
    )


def test_a_private_dotenv_is_not_warned_about(tmp_path, recwarn):
    _dotenv(tmp_path, f"HF_TOKEN={TOKEN}\n", mode=0o600)
    _secrets.resolve(["HF_TOKEN"], runtime=TERMINAL, project=tmp_path)
    assert not recwarn.list


def test_dotenv_tracked_by_git(tmp_path):
    _dotenv(tmp_path, "HF_TOKEN=x\n")
    assert not _secrets.dotenv_tracked(tmp_path)  # not a git checkout
    (tmp_path / ".git").mkdir()
    assert _secrets.dotenv_tracked(tmp_path)  # no .gitignore
    (tmp_path / ".gitignore").write_text("runs/\n")
    assert _secrets.dotenv_tracked(tmp_path)
    (tmp_path / ".gitignore").write_text("runs/\n/.env\n")
    assert not _secrets.dotenv_tracked(tmp_path)


# -- doctor's rows ------------------------------------------------------------------------------------


def test_doctor_rows_say_where_from_never_the_value(monkeypatch, tmp_path):
    _dotenv(tmp_path, f"MY_KEY={OTHER}\nWANDB_API_KEY=shadowed\n")
    monkeypatch.setenv("WANDB_API_KEY", OTHER)
    monkeypatch.setenv("GPG_KEY", "not a known name")
    _secrets.resolve(["HF_TOKEN"], sources=[("colab", _source({"HF_TOKEN": TOKEN}))], runtime=TERMINAL)
    assert "HF_TOKEN" not in dict(_secrets.doctor_rows(tmp_path))  # what injected sources found is not remembered
    monkeypatch.setitem(_secrets._cache, "HF_TOKEN", _secrets.Secret("HF_TOKEN", "colab", "Colab secrets", TOKEN))
    rows = _secrets.doctor_rows(tmp_path)
    assert rows == [
        ("HF_TOKEN", "Colab secrets"),
        ("WANDB_API_KEY", "the environment"),
        ("MY_KEY", str(tmp_path / ".env")),
    ]
    assert TOKEN not in repr(rows) and OTHER not in repr(rows)


def test_a_binary_masker_hides_utf8_values_split_inside_a_character():
    value = "clé-secrète-ü"
    data = f"a {value} b\n".encode()
    for cut in range(len(data) + 1):
        m = _secrets.Masker([value], binary=True)
        shown = m.feed(data[:cut]) + m.feed(data[cut:]) + m.flush()
        assert shown == b"a *** b\n", cut


# -- through the fake google.colab.userdata and kaggle_secrets (tests/fakes) --------------------------------


def test_colab_secrets_from_the_panel(vm, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_COLAB_SECRETS", f'{{"HF_TOKEN": "{TOKEN}"}}')
    found = _secrets.resolve(["HF_TOKEN"], project=tmp_path)
    assert found.sources() == {"HF_TOKEN": "colab"} and found.env() == {"HF_TOKEN": TOKEN}
    assert vm.calls() == ["blocking_request GetSecret timeout_sec=10"]
    _secrets.resolve(["HF_TOKEN"], project=tmp_path)  # kept: Colab is not asked twice
    assert len(vm.calls()) == 1


def test_colab_secret_without_notebook_access(vm, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_COLAB_SECRETS", f'{{"HF_TOKEN": "{TOKEN}"}}')
    monkeypatch.setenv("FAKE_COLAB_SECRETS_NO_ACCESS", "HF_TOKEN")
    with pytest.raises(SecretNotFound) as err:
        _secrets.resolve(["HF_TOKEN"], project=tmp_path)
    assert err.value.tried[0] == ("colab", "in Colab secrets, but this notebook has no access to it")
    assert err.value.hint.startswith("Open the key icon (Secrets) in Colab's left sidebar and turn on Notebook access")
    assert TOKEN not in str(err.value)
    monkeypatch.setenv("HF_TOKEN", OTHER)
    assert _secrets.resolve(["HF_TOKEN"], project=tmp_path).sources() == {"HF_TOKEN": "env"}


def test_colab_secrets_time_out_without_a_browser_once_then_are_skipped(vm, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("COLABKIT_FRONTEND")
    monkeypatch.setenv("FAKE_COLAB_FRONTEND", "none")
    monkeypatch.setenv("FAKE_COLAB_SECRETS", f'{{"HF_TOKEN": "{TOKEN}"}}')
    monkeypatch.setenv("HF_TOKEN", OTHER)
    monkeypatch.setenv("WANDB_API_KEY", OTHER + "x")
    shell = type("Shell", (), {"__module__": "google.colab._shell"})()
    shell.parent_header = {"header": {"session": "cli-1"}, "metadata": {}}
    monkeypatch.setattr("builtins.get_ipython", lambda: shell, raising=False)
    found = _secrets.resolve(["HF_TOKEN", "WANDB_API_KEY"], project=tmp_path)
    assert found.sources() == {"HF_TOKEN": "env", "WANDB_API_KEY": "env"}
    assert vm.calls() == ["blocking_request GetSecret timeout_sec=10"]  # one timeout, not one per name
    assert _runtime.detect_runtime().front_end == "headless"
    out = capsys.readouterr().out
    assert out.count("colabkit: Colab secrets did not answer within 10 s") == 1
    with pytest.raises(SecretNotFound) as err:
        _secrets.resolve(["OTHER_KEY"], project=tmp_path)
    assert err.value.hint.startswith("Colab secrets can only be read from the Colab web UI. Upload a .env file")


def test_userdata_exceptions_are_all_mapped(vm):
    from google.colab import userdata

    from colabkit import _colab

    for name in ("TimeoutException", "SecretNotFoundError", "NotebookAccessError"):
        assert name in _colab.USERDATA_STATUS and hasattr(userdata, name)
    with pytest.raises(ValueError, match="Secret name cannot contain spaces"):
        userdata.get("HF TOKEN")  # colabkit refuses such names before asking


def test_kaggle_secrets(kaggle, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_KAGGLE_SECRETS", f'{{"HF_TOKEN": "{TOKEN}"}}')
    monkeypatch.setenv("WANDB_API_KEY", OTHER)
    found = _secrets.resolve(["HF_TOKEN", "WANDB_API_KEY"], project=tmp_path)
    assert found.sources() == {"HF_TOKEN": "kaggle", "WANDB_API_KEY": "env"}
    assert kaggle.secret_calls() == ["get_secret HF_TOKEN", "get_secret WANDB_API_KEY"]


@pytest.mark.parametrize(
    ("setting", "detail"),
    [
        ({}, "not attached to this notebook"),
        ({"FAKE_KAGGLE_NET": "off"}, "the Kaggle secrets service could not be reached (is Internet on?)"),
        ({"KAGGLE_USER_SECRETS_TOKEN": None}, "Kaggle secrets are not enabled for this notebook (CredentialError)"),
        ({"FAKE_KAGGLE_AUTH": "unauthenticated"}, "the Kaggle secrets service refused this notebook's token (Unauthenticated)"),
    ],
)
def test_kaggle_secrets_that_cannot_answer(kaggle, monkeypatch, tmp_path, setting, detail):
    for key, value in setting.items():
        if value is None:
            monkeypatch.delenv(key)
        else:
            monkeypatch.setenv(key, value)
    with pytest.raises(SecretNotFound) as err:
        _secrets.resolve(["HF_TOKEN"], project=tmp_path)
    assert err.value.tried[0] == ("kaggle", detail)
    assert err.value.hint.startswith("In the notebook editor open Add-ons → Secrets, add HF_TOKEN")


def test_kaggle_never_asks_colab_although_google_colab_imports(kaggle, monkeypatch, tmp_path):
    import importlib

    importlib.import_module("google.colab.userdata")  # Kaggle's image inherits Colab's packages
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert [name for name, _ in _secrets.default_sources(project=tmp_path)] == ["kaggle", "env", "dotenv"]


# -- doctor --------------------------------------------------------------------------------------------


def test_doctor_lists_secrets_and_where_from_never_values(vm, monkeypatch, tmp_path):
    import colabkit

    monkeypatch.setenv("FAKE_COLAB_SECRETS", f'{{"HF_TOKEN": "{TOKEN}"}}')
    monkeypatch.setenv("WANDB_API_KEY", OTHER)
    (tmp_path / "drive/MyDrive/proj").mkdir(parents=True)
    project = colabkit.project(str(tmp_path / "drive/MyDrive/proj"), install=False).path
    _dotenv(project, "MY_KEY=abcdefgh\n")
    _secrets.resolve(["HF_TOKEN"])
    check = colabkit.doctor()["secrets"]
    assert check.status == "ok" and check.fix is None
    assert check.detail == f"HF_TOKEN from Colab secrets, WANDB_API_KEY from the environment, MY_KEY from {project / '.env'}"
    assert TOKEN not in str(colabkit.doctor()) and OTHER not in str(colabkit.doctor())


def test_doctor_warns_about_a_readable_or_committable_dotenv(monkeypatch, tmp_path, recwarn):
    (tmp_path / ".git").mkdir()
    path = _dotenv(tmp_path, "HF_TOKEN=abcdefgh\n", mode=0o644)
    status, detail, fix = _secrets.verdict(TERMINAL, tmp_path)
    assert (status, fix) == ("warn", f"chmod 600 {path}")
    assert detail == f"HF_TOKEN from {path}; {path} may be read by every user here (-rw-r--r--)"
    os.chmod(path, 0o600)
    status, detail, fix = _secrets.verdict(TERMINAL, tmp_path)
    assert (status, fix) == ("warn", f"add .env to {tmp_path / '.gitignore'} so git never commits it")
    (tmp_path / ".gitignore").write_text(".env\n")
    assert _secrets.verdict(TERMINAL, tmp_path) == ("ok", f"HF_TOKEN from {path}", None)
    assert not recwarn.list  # said by the check, not as a warning too


def test_doctor_without_a_browser_says_colab_secrets_cannot_be_read(monkeypatch, tmp_path):
    status, detail, _ = _secrets.verdict(_runtime.Runtime(kind="colab", front_end="vscode"), tmp_path)
    assert detail.endswith(
        "; Colab secrets cannot be read here (this kernel is driven by the Colab VS Code extension): use the "
        "environment or .env"
    )


# -- run(secrets=...): a script that prints its secret ------------------------------------------------------


_PRINTS = textwrap.dedent(
    """\
    import os, sys, time
    value = os.environ["HF_TOKEN"]
    ancestors, pid = [], os.getpid()
    while pid > 1:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            ancestors.append(fh.read())
        with open(f"/proc/{pid}/stat", "rb") as fh:
            pid = int(fh.read().rsplit(b")", 1)[1].split()[1])
    print("env ok" if value == os.environ["EXPECTED"][::-1] else "env WRONG", flush=True)
    print("argv ok" if not any(value.encode() in a for a in ancestors) else "argv HAS IT", flush=True)
    print(f"whole: {value}", flush=True)
    sys.stdout.write(f"split: {value[:7]}"); sys.stdout.flush(); time.sleep(0.3)
    sys.stdout.write(f"{value[7:]} and on stderr:\\n"); sys.stdout.flush()
    print(value, file=sys.stderr, flush=True)
    print(f"\\r{value[:3]}\\r{value}\\r", end="", flush=True)
    raise RuntimeError(f"failing with the token {value} in the message")
    """
)


def _no_value_anywhere(folder, value):
    for path in folder.rglob("*"):
        if path.is_file():
            assert value.encode() not in path.read_bytes(), path


def test_a_script_that_prints_its_secret_never_shows_it(tmp_path, monkeypatch, capsys):
    import colabkit

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "prints.py").write_text(_PRINTS)
    monkeypatch.chdir(proj)
    monkeypatch.setattr(_run, "_project_dir", lambda: None)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("EXPECTED", TOKEN[::-1])  # the script checks it got the real value
    r = colabkit.run("prints.py", "--epochs", "1", secrets=["HF_TOKEN"], check=False, interval=0.1)
    assert r.status == "failed"
    log = r.log_path.read_text()
    assert "env ok\n" in log and "argv ok\n" in log
    assert "whole: ***\n" in log and "split: *** and on stderr:\n" in log and "\n***\n" in log
    assert "RuntimeError: failing with the token *** in the message" in log
    _no_value_anywhere(r.log_dir, TOKEN)
    summary = json.loads((r.log_dir / "summary.json").read_text())
    assert summary["secrets"] == {"HF_TOKEN": "env"}
    error = r.error()
    assert TOKEN not in str(error) and TOKEN not in error.render("cli") and TOKEN not in error.stderr_tail
    assert TOKEN not in "".join(r.stderr_tail) and TOKEN not in repr(r)
    with pytest.raises(RunFailed) as raised:
        r.check()
    assert TOKEN not in str(raised.value)
    screen = capsys.readouterr()
    assert TOKEN not in screen.out and TOKEN not in screen.err
    assert "whole: ***" in screen.out


def test_a_secret_passed_as_an_argument_too_is_recorded_masked(tmp_path, monkeypatch):
    import colabkit

    (tmp_path / "args.py").write_text("import sys\nprint(len(sys.argv))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_run, "_project_dir", lambda: None)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    r = colabkit.run("args.py", "--hub", TOKEN, f"--auth={TOKEN}", secrets=["HF_TOKEN"], monitor=False)
    assert r.log_path.read_text() == "4\n"  # the script got them
    assert r.args == ("--hub", "***", "--auth=***")
    assert json.loads((r.log_dir / "summary.json").read_text())["args"] == ["--hub", "***", "--auth=***"]
    _no_value_anywhere(r.log_dir, TOKEN)


def test_a_secret_from_the_projects_dotenv_reaches_the_script_only(tmp_path, monkeypatch):
    import colabkit

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "show.py").write_text("import os\nprint('got', os.environ['WANDB_API_KEY'][::-1])\n")
    _dotenv(proj, f"WANDB_API_KEY={OTHER}\n")
    monkeypatch.chdir(proj)
    project = colabkit.project(str(proj), install=False)
    r = colabkit.run("show.py", secrets=["WANDB_API_KEY"], monitor=False)
    assert r.log_path.read_text() == f"got {OTHER[::-1]}\n"
    summary = json.loads((r.log_dir / "summary.json").read_text())
    assert summary["secrets"] == {"WANDB_API_KEY": "dotenv"}
    assert "WANDB_API_KEY" not in os.environ
    assert project.path == proj


def test_a_missing_secret_stops_the_run_before_anything_is_made(tmp_path, monkeypatch):
    import colabkit

    (tmp_path / "x.py").write_text("print(1)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_run, "_project_dir", lambda: None)
    with pytest.raises(SecretNotFound):
        colabkit.run("x.py", secrets=["COLABKIT_NOT_SET_ANYWHERE"])
    assert not (tmp_path / "runs").exists()


def test_secret_after_the_launcher_died_is_masked_by_the_supervisor(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "late.py").write_text(
        textwrap.dedent(
            """\
            import os, signal, sys, time
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # it goes on after its launcher died, to print
            open("child.pid", "w").write(str(os.getpid()))
            while not os.path.exists("go"):
                time.sleep(0.02)
            value = os.environ["HF_TOKEN"]
            sys.stdout.write(f"late {value[:9]}"); sys.stdout.flush(); time.sleep(0.2)
            print(f"{value[9:]} done", flush=True)
            """
        )
    )
    code = "import colabkit; colabkit.run('late.py', secrets=['HF_TOKEN'], monitor=False)"
    launcher = subprocess.Popen(
        [sys.executable, "-c", code], cwd=proj, env=child_env(HF_TOKEN=TOKEN),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (proj / "child.pid").exists() or not (proj / "child.pid").read_text():
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        child = int((proj / "child.pid").read_text())
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        (proj / "go").touch()  # the script prints its secret with nobody but the supervisor reading
        (run_dir,) = (proj / "runs").iterdir()
        deadline = time.monotonic() + 30
        while "late *** done" not in (run_dir / "output.log").read_text():
            assert time.monotonic() < deadline, (run_dir / "output.log").read_text()
            time.sleep(0.05)
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{child}"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _no_value_anywhere(run_dir, TOKEN)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def test_colabkit_run_secret_option(tmp_path, monkeypatch):
    (tmp_path / "show.py").write_text("import os\nprint(os.environ['HF_TOKEN'])\n")
    out = subprocess.run(
        [sys.executable, "-m", "colabkit", "run", "--no-monitor", "--secret", "HF_TOKEN", "show.py"],
        cwd=tmp_path, env=child_env(HF_TOKEN=TOKEN), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "***\n" in out.stdout and TOKEN not in out.stdout + out.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "colabkit", "run", "--secret", "NOT_SET_ANYWHERE_X", "show.py"],
        cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.startswith("colabkit run: secret NOT_SET_ANYWHERE_X was not found (the environment: not set")
    assert "export NOT_SET_ANYWHERE_X=... first" in missing.stderr


def test_colabkit_run_reads_the_dotenv_of_the_folder_it_runs_in(tmp_path):
    (tmp_path / "show.py").write_text("import os\nprint('got', os.environ['WANDB_API_KEY'][::-1])\n")
    _dotenv(tmp_path, f"WANDB_API_KEY={OTHER}\n")
    out = subprocess.run(
        [sys.executable, "-m", "colabkit", "run", "--no-monitor", "--secret", "WANDB_API_KEY", "show.py"],
        cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"got {OTHER[::-1]}\n" in out.stdout and OTHER not in out.stdout + out.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["secrets"] == {"WANDB_API_KEY": "dotenv"}
    _no_value_anywhere(run_dir, OTHER)


def test_colabkit_doctor_lists_names_and_sources_never_values(tmp_path):
    _dotenv(tmp_path, f"MY_KEY={OTHER}\n", mode=0o644)
    out = subprocess.run(
        [sys.executable, "-m", "colabkit", "doctor"],
        cwd=tmp_path, env=child_env(HF_TOKEN=TOKEN), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    (row,) = [line for line in out.stdout.splitlines() if "secrets" in line]
    assert f"HF_TOKEN from the environment, MY_KEY from {tmp_path / '.env'}" in row
    assert "may be read by every user here (-rw-r--r--)" in row
    assert f"chmod 600 {tmp_path / '.env'}" in out.stdout
    assert TOKEN not in out.stdout + out.stderr and OTHER not in out.stdout + out.stderr


def test_a_run_on_kaggle_gets_its_secret_from_kaggle_and_never_shows_it(kaggle, monkeypatch, capsys):
    import colabkit

    monkeypatch.setenv("FAKE_KAGGLE_SECRETS", f'{{"HF_TOKEN": "{TOKEN}"}}')
    (kaggle.working / "train.py").write_text(
        "import os, sys\nv = os.environ['HF_TOKEN']\nprint('got', v[::-1], v)\n"
        "sys.stdout.write(v[:6]); sys.stdout.flush(); print(v[6:])\nraise SystemExit(f'bad token {v}')\n"
    )
    colabkit.setup(gpu=False)
    r = colabkit.run("train.py", secrets=["HF_TOKEN"], check=False, monitor=False)
    assert r.status == "failed" and r.log_dir.parent == kaggle.working / "runs"
    assert r.log_path.read_text().startswith(f"got {TOKEN[::-1]} ***\n***\n")
    assert json.loads((r.log_dir / "summary.json").read_text())["secrets"] == {"HF_TOKEN": "kaggle"}
    assert kaggle.secret_calls() == ["get_secret HF_TOKEN"]
    _no_value_anywhere(r.log_dir, TOKEN)
    error = r.error()
    assert "bad token ***" in error.stderr_tail and TOKEN not in str(error) + error.render("cli")
    screen = capsys.readouterr()
    assert TOKEN not in screen.out + screen.err
