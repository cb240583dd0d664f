"""``release()``: make Drive's writes durable, then give the Colab runtime back, never the other way round."""

from __future__ import annotations

import sys

from . import _display, _runtime
from .errors import MountError, ReleaseError

__all__ = ["release"]


def release() -> None:
    """Flush Drive, then give the Colab runtime back (``google.colab.runtime.unassign``).

    The VM is released only after the flush succeeded; if it fails the VM is kept so nothing is lost.
    Code after this call may not run: the VM is gone. On Kaggle and elsewhere there is nothing to give back:
    it says so and returns.

    Raises:
        ReleaseError: The flush failed (the VM is kept), or Colab could not unassign the runtime.

    Examples:
        >>> colabkit.release()      # last line of the notebook
    """
    rt = _runtime.detect_runtime()
    if rt.is_kaggle:
        _display.show(
            "colabkit: this is Kaggle: there is nothing to release from here. Stop the session with the power "
            "button in the notebook editor (or let a committed run end) so it stops counting against the weekly "
            "GPU quota; /kaggle/working is kept only in a saved version."
        )
        return
    if not rt.is_colab:
        _display.show(f"colabkit: this is {rt.describe()}, not Colab: there is no runtime to release.")
        return
    from . import _colab, _drive

    try:
        _drive.flush()
    except MountError as exc:
        raise ReleaseError(
            f"Drive could not be flushed, so the runtime was kept: {exc.message}",
            f"{exc.hint or 'Call colabkit.flush() again.'} Then call colabkit.release() again.",
        ) from exc
    sys.stdout.flush()
    _colab.runtime_unassign()
