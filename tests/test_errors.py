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


def test_plain_errors_pickle():
    exc = pickle.loads(pickle.dumps(errors.ColabkitError("m", "h")))
    assert str(exc).startswith("m")
