"""Thin wrappers over ``google.colab`` (drive, runtime): the only module that imports it, and the one place
its exceptions become colabkit errors with the fix."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from . import _mounts, _runtime
from .errors import ColabkitError, MountError, ReleaseError

__all__ = [
    "USERDATA_STATUS",
    "drive_flush_and_unmount",
    "drive_mount",
    "frontend_answers",
    "runtime_unassign",
    "userdata_lookup",
]

_METHODS_OFF_COLAB = (
    "Here use colabkit.mount('local') (`colabkit mount --method local` in a terminal; a local folder stands in "
    "for Drive), or for real Drive access colabkit.mount('ocamlfuse', service_account='key.json') "
    "(`colabkit mount --method ocamlfuse --service-account key.json`) with a service account key whose e-mail "
    "the Drive folders are shared with."
)
_FAQ = "https://research.google.com/colaboratory/faq.html#drive-timeout"


def _import(name: str):  # type: ignore[no-untyped-def]
    """Import ``google.colab.<name>``; off Colab a MountError that says which methods work here."""
    try:
        module = __import__(f"google.colab.{name}", fromlist=[name])
    except ImportError:
        rt = _runtime.detect_runtime()
        raise MountError(
            f"google.colab is not importable here ({rt.describe()}), so method='drive' cannot work",
            _METHODS_OFF_COLAB,
            method="drive",
            reason="not_colab",
        ) from None
    return module


def _translate(exc: BaseException, op: str, mountpoint: str | None) -> ColabkitError | None:
    """The colabkit error for a known google.colab failure, ``None`` for one we do not know."""
    name = type(exc).__name__
    text = str(exc)
    mp = mountpoint or "/content/drive"

    def mount_error(message: str, hint: str, reason: str) -> MountError:
        return MountError(message, hint, mountpoint=mountpoint, method="drive", reason=reason)

    if isinstance(exc, NotImplementedError) and "Colab Enterprise" in text:
        return mount_error(
            "google.colab.drive.mount is refused in Colab Enterprise",
            "Use colabkit.mount('ocamlfuse', service_account='key.json') with a service account that can read the "
            "files, or copy the data to a Cloud Storage bucket.",
            "enterprise",
        )
    if isinstance(exc, NotImplementedError) and "unsupported in this environment" in text:
        return mount_error(
            f"google.colab.drive.mount works only on a Colab VM, and this is {_runtime.detect_runtime().describe()}",
            _METHODS_OFF_COLAB,
            "not_colab",
        )
    if name == "MessageError" and ("User cancelled dfs_ephemeral" in text or "Credentials propagation unsuccessful" in text):
        # the Colab VS Code extension's own answers to drive.mount's consent request (docs/front-ends.md)
        return mount_error(
            "Google Drive was not connected: the consent dialog in VS Code was dismissed or its sign-in failed",
            'Run the cell again; when VS Code asks "Permit ... to access your Google Drive files?" choose Connect '
            "to Google Drive, sign in in the browser it opens with the account of this Colab server, then click "
            "Continue in VS Code.",
            "credentials",
        )
    if name == "MessageError" and "credential propagation" in text:
        return mount_error(
            "Google Drive refused the credentials (credential propagation was unsuccessful)",
            "Sign in with the same Google account as the notebook (top right of Colab), allow the popup and tick "
            "every permission it asks for, then run the cell again. For a second account use method='ocamlfuse'.",
            "credentials",
        )
    if name in ("TIMEOUT", "EOF") and type(exc).__module__.startswith("pexpect"):
        # drive.py waits for DriveFS through pexpect, whose exceptions print the whole spawn object: never show it
        if name == "TIMEOUT":
            return mount_error(
                f"Drive did not mount at {mp} within the time drive.mount allows (its wait for DriveFS ran out)",
                "Run the cell again; if it keeps happening use Runtime → Restart session, or give Drive more time: "
                "colabkit.mount(timeout=900).",
                "timeout",
            )
        return mount_error(
            f"Drive could not be mounted at {mp}: drive.mount's shell ended early",
            "Run the cell again; if it keeps failing, use Runtime → Restart session, then mount again.",
            "failed",
        )
    if name == "RuntimeManagementError":
        return ReleaseError(
            f"Colab could not give the runtime back: {text}",
            "Use Runtime → Disconnect and delete runtime in the Colab menu; your Drive files were already flushed.",
        )
    if isinstance(exc, ValueError):
        if text == "Mountpoint must not contain a space.":
            return mount_error(
                f"the mountpoint {mp!r} contains a space, which drive.mount refuses",
                "Mount at a path without spaces, e.g. colabkit.mount(mountpoint='/content/drive'); 'My Drive' "
                "inside it is fine.",
                "space",
            )
        if text == "Mountpoint must not already contain files":
            return mount_error(
                f"the mountpoint {mp} is not empty: it holds {_mounts.entries_text(mountpoint)}",
                f"Move those files out of {mp} yourself (colabkit never deletes or moves them), or mount elsewhere: "
                "colabkit.mount(mountpoint='/content/drive2').",
                "not_empty",
            )
        if text == "Mountpoint must not be a symlink":
            return mount_error(
                f"the mountpoint {mp} is a symlink, which drive.mount refuses",
                f"Remove the link ({mp}) or pass another mountpoint, e.g. mountpoint='/content/drive'.",
                "symlink",
            )
        if text == "Mountpoint must either be a directory or not exist":
            return mount_error(
                f"the mountpoint {mp} is a file, not a folder",
                "Rename that file or pass another mountpoint; the mountpoint must be a folder or not exist yet.",
                "not_dir",
            )
        if text == "Mountpoint must be in a directory that exists":
            return mount_error(
                f"the folder that should hold the mountpoint {mp} does not exist",
                f"Create it first (os.makedirs({os.path.dirname(mp.rstrip('/'))!r})) or mount at /content/drive.",
                "no_parent",
            )
        if text.startswith("mount failed: timeout"):
            return mount_error(
                f"Drive did not answer in time while reading the My Drive root at {mp}",
                "My Drive's root probably holds thousands of items: move them into a few folders at "
                "drive.google.com, then run the cell again. Restarting the runtime (Runtime → Restart session) "
                f"also helps. More: {_FAQ}",
                "timeout",
            )
        if text == "mount failed":
            return mount_error(
                f"Drive could not be mounted at {mp} (mount failed)",
                "Run the cell again and answer the sign-in popup within the timeout; if it keeps failing, use "
                "Runtime → Restart session, then mount again.",
                "failed",
            )
        if text == "flush_and_unmount failed":
            return mount_error(
                "Drive could not push pending writes and unmount (flush_and_unmount failed)",
                "Keep the runtime, wait a minute and call colabkit.flush() again; copy important files "
                "elsewhere before disconnecting.",
                "flush",
            )
    return None


@contextlib.contextmanager
def _map_colab_errors(op: str, mountpoint: str | Path | None = None) -> Iterator[None]:
    """Turn every google.colab failure inside the block into the most specific colabkit error."""
    mp = str(mountpoint) if mountpoint is not None else None
    try:
        yield
    except ColabkitError:
        raise
    except Exception as exc:
        mapped = _translate(exc, op, mp)
        if mapped is None:
            cls = ReleaseError if op == "unassign" else MountError
            kwargs = {} if cls is ReleaseError else {"mountpoint": mp, "method": "drive"}
            mapped = cls(
                f"google.colab {op} failed: {type(exc).__name__}: {exc}",
                "Run the cell again; if it keeps failing use Runtime → Restart session.",
                **kwargs,
            )
        raise mapped from exc


def drive_mount(mountpoint: str | Path, *, force_remount: bool, timeout_ms: int, readonly: bool) -> None:
    """Call ``google.colab.drive.mount`` with every argument spelled out; failures become MountError."""
    with _map_colab_errors("drive.mount", mountpoint):
        drive = _import("drive")
        drive.mount(str(mountpoint), force_remount=force_remount, timeout_ms=timeout_ms, readonly=readonly)


def drive_flush_and_unmount(*, timeout_ms: int = 24 * 3600 * 1000) -> None:
    """Call ``google.colab.drive.flush_and_unmount``; failures become MountError."""
    with _map_colab_errors("drive.flush_and_unmount"):
        drive = _import("drive")
        drive.flush_and_unmount(timeout_ms=timeout_ms)


def runtime_unassign() -> None:
    """Call ``google.colab.runtime.unassign``; failures become ReleaseError."""
    with _map_colab_errors("unassign"):
        try:
            rt = __import__("google.colab.runtime", fromlist=["runtime"])
        except ImportError:
            raise ReleaseError(
                "google.colab is not importable, so there is no Colab runtime to give back",
                "Nothing to do off Colab; on Colab use Runtime → Disconnect and delete runtime.",
            ) from None
        rt.unassign()


# google.colab.userdata's exceptions -> what colabkit's secrets say (colab-facts §8, docs/front-ends.md)
USERDATA_STATUS = {
    "TimeoutException": "timeout",  # nobody answered in 10 s: no Colab web UI behind this kernel
    "SecretNotFoundError": "missing",
    "NotebookAccessError": "no_access",
    "ValueError": "error",  # a name userdata refuses (empty, whitespace): colabkit checks names first
}


def userdata_lookup(name: str) -> tuple[str, str | None]:
    """Ask Colab's secrets panel for ``name`` through ``google.colab.userdata.get`` (it waits at most 10 s).

    Returns ``("ok", value)``, or ``(status, None)``: ``"missing"``, ``"no_access"`` (the notebook was
    not granted it), ``"timeout"`` (no answer: no Colab web UI behind this kernel), ``"unavailable"``
    (no google.colab here) or ``"error"``. Never raises, and never puts a value in a message.
    """
    try:
        userdata = __import__("google.colab.userdata", fromlist=["userdata"])
    except ImportError:
        return "unavailable", None
    try:
        value = userdata.get(name)
    except Exception as exc:
        return USERDATA_STATUS.get(type(exc).__name__, "error"), None
    return ("ok", value) if isinstance(value, str) else ("error", None)


def frontend_answers(timeout_s: float) -> bool | None:
    """Whether a browser answers a frontend request (``cell_javascript_eval`` of a constant) within ``timeout_s``.

    Only Colab's web UI evaluates it: the VS Code extension and google-colab-cli never answer. ``None``
    when the request cannot be sent here (no google.colab, no kernel).
    """
    import builtins

    try:
        message = __import__("google.colab._message", fromlist=["_message"])
        get_ipython = getattr(builtins, "get_ipython", None)
        shell = get_ipython() if get_ipython is not None else None
        parent = getattr(shell, "parent_header", None) if shell is not None else None
        request = message.send_request("cell_javascript_eval", {"script": "'colabkit'"}, parent=parent or None)
    except Exception:
        return None
    try:
        reply = message.read_reply_from_input(request, timeout_sec=timeout_s)
    except Exception as exc:
        return type(exc).__name__ == "MessageError"  # an answer, if an error: someone is there
    return reply is not None

