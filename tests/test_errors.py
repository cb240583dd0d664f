"""The error classes: builtin bases a user would catch, fields, and message + hint shape."""

from __future__ import annotations

import pickle

import pytest

import colabkit
from colabkit import errors


def test_message_and_hint_shape():
    exc = errors.ColabkitError("Drive is not mounted.", "Call colabkit.mount() first.")
    assert str(exc) == "Drive is not mounted.\nHINT: Call colabkit.mount() first."
    assert exc.message == "Drive is not mounted." and exc.hint == "Call colabkit.mount() first."
    assert str(errors.ColabkitError("only a message")) == "only a message"


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.NoGpuError, RuntimeError),
        (errors.MountError, OSError),
        (errors.ProjectNotFound, FileNotFoundError),
        (errors.StageError, OSError),
    ],
)
def test_errors_are_catchable_as_builtins(cls, builtin):
    exc = cls("what happened", "what to do")
    assert isinstance(exc, builtin) and isinstance(exc, errors.ColabkitError)
    assert str(exc) == "what happened\nHINT: what to do"
    with pytest.raises(builtin):
        raise exc


def test_fields_are_kept():
    exc = errors.MountError("m", "h", mountpoint="/content/drive", method="drive")
    assert (exc.mountpoint, exc.method) == ("/content/drive", "drive")
    exc = errors.ProjectNotFound("p", "h", path="/d/MyDrive/tset", candidates=("test", "tests"))
    assert exc.candidates == ("test", "tests") and exc.path == "/d/MyDrive/tset"
    exc = errors.CudaOutOfMemory("o", "h", peak_bytes=10, total_bytes=15, returncode=1, stderr_tail="x", log_path="/l")
    assert isinstance(exc, errors.RunFailed)
    assert (exc.peak_bytes, exc.total_bytes, exc.returncode, exc.stderr_tail, exc.log_path) == (10, 15, 1, "x", "/l")
    exc = errors.InstallError("i", "h", returncode=1, output_tail="ERROR: No matching distribution")
    assert exc.output_tail.startswith("ERROR")


def test_every_error_is_public():
    for name in errors.__all__:
        assert getattr(colabkit, name) is getattr(errors, name)
        assert name in colabkit.__all__


def test_top_level_names_read_colabkit():
    assert repr(colabkit.NoGpuError).startswith("<class 'colabkit.NoGpuError'")


# one instance of every error class, with every field set
EVERY_ERROR = [
    errors.ColabkitError("m", "h", cli_message="cm", cli_hint="ch"),
    errors.GpuError("m", "h"),
    errors.NoGpuError("m", "h", runtime="colab", reason="no GPU"),
    errors.NotEnoughGpus("m", "h", wanted=2, visible=1, runtime="kaggle", cli_message="cm", cli_hint="ch"),
    errors.CudaMismatchError("m", "h", torch_version="2.5.1", torch_cuda="12.4", driver_cuda="12.2"),
    errors.MountError("m", "h", mountpoint="/content/drive", method="drive", reason="dead", cli_hint="ch"),
    errors.ProjectNotFound("m", "h", path="/d/MyDrive/tset", candidates=("test",), cli_hint="ch"),
    errors.InstallError("m", "h", returncode=1, output_tail="ERROR: x"),
    errors.StageError("m", "h", needed_bytes=10, free_bytes=5),
    errors.CheckpointError("m", "h", path="/c/ckpt.pt"),
    errors.ScriptNotFound("m", "h", path="/p/t.py", cli_hint="ch"),
    errors.SecretNotFound("m", "h", name="HF_TOKEN", tried=(("environment", "not set"),), cli_hint="ch"),
    errors.RunFailed("m", "h", returncode=1, stderr_tail="x", log_path="/l", cli_message="cm", cli_hint="ch"),
    errors.CudaOutOfMemory("m", "h", peak_bytes=10, total_bytes=15, returncode=1, stderr_tail="x", log_path="/l"),
    errors.ReleaseError("m", "h"),
]


def test_every_error_class_is_in_the_pickle_test():
    assert {type(e).__name__ for e in EVERY_ERROR} == set(errors.__all__) - {"ColabkitWarning"}


@pytest.mark.parametrize("exc", EVERY_ERROR, ids=lambda e: type(e).__name__)
def test_every_error_pickles_with_its_hint_and_fields(exc):
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert vars(back) == vars(exc)  # message, hint, the CLI spellings and every field
    assert (back.message, back.hint, str(back)) == ("m", "h", "m\nHINT: h")
    assert back.render("cli") == exc.render("cli")


def test_the_command_line_spelling_is_used_only_when_asked():
    exc = errors.RunFailed("stopped by timeout=5s", "Pass a larger timeout=", cli_message="stopped by --timeout 5s",
                           cli_hint="Pass a larger --timeout")  # fmt: skip
    assert exc.render() == "stopped by timeout=5s\nHINT: Pass a larger timeout="
    assert exc.render("cli") == "stopped by --timeout 5s\nHINT: Pass a larger --timeout"
    plain = errors.MountError("Drive is dead", "Remount")
    assert plain.render("cli") == plain.render() == "Drive is dead\nHINT: Remount"


@pytest.mark.parametrize(
    ("kind", "tpu", "message", "fix_starts"),
    [
        ("colab", False, "No NVIDIA GPU on this Colab runtime (x).", "In the Colab menu choose Runtime → Change runtime type"),
        ("colab", True, "This is a Colab TPU runtime: it has no NVIDIA GPU (x).", "In the Colab menu choose Runtime"),
        ("kaggle", False, "No NVIDIA GPU in this Kaggle notebook (x).", "In the notebook editor open Settings → Accelerator"),
        ("terminal", True, "This is a TPU runtime: it has no NVIDIA GPU (x).", "Start a runtime or machine with an NVIDIA GPU"),
        ("jupyter", False, "No NVIDIA GPU found (x).", "Install the NVIDIA driver for this machine's GPU"),
    ],
)
def test_no_gpu_is_said_for_the_runtime(kind, tpu, message, fix_starts):
    exc = errors.NoGpuError.for_runtime("x", kind, tpu=tpu)
    assert (exc.message, exc.runtime, exc.reason) == (message, kind, "x")
    assert exc.hint.startswith(fix_starts) and exc.hint == errors.no_gpu_fix(kind, tpu=tpu)


def test_a_failed_script_in_a_notebook_is_not_shown_its_own_last_lines_again():
    tail = 'Traceback (most recent call last):\n  File "train.py", line 2, in <module>\nValueError: bad label 7'
    exc = errors.RunFailed.exited("train.py", "exit status 1", tail=tail, log_path="/runs/x/output.log")
    fix = "HINT: Fix the error shown above and run again; the full output is in /runs/x/output.log"
    assert exc.render("notebook") == f"train.py exited with exit status 1\n{fix}"  # the cell showed the lines
    assert str(exc) == f"train.py exited with exit status 1; last lines of its output:\n{tail}\n{fix}"  # a log keeps them
    assert exc.render("cli") == f"train.py exited with exit status 1\n{fix}"


@pytest.mark.parametrize(
    ("tail", "fix"),
    [
        ("usage: train.py [-h]\ntrain.py: error: unrecognized arguments: --lr", "Fix the error shown above and run again"),
        ("epoch 3 done\nsaved", "Its output shows no error: look for what ends it with exit status 3 (sys.exit, exit())"),
        ("", "Run it again with a print at its start to see how far it gets; its log is /l"),
    ],
)
def test_fix_the_error_shown_above_only_when_an_error_was_shown(tail, fix):
    exc = errors.RunFailed.exited("train.py", "exit status 3", tail=tail, log_path="/l")
    assert exc.hint.startswith(fix)
