"""colabkit's manners in a notebook cell: summaries shown once, warnings as one-line notes, and a failed
``setup()`` named in the cells that follow it.

Works with any IPython kernel (Colab runs IPython 7.34, Jupyter newer ones) and does nothing elsewhere;
IPython is never imported here, only asked through the ``get_ipython`` builtin it installs.
"""

from __future__ import annotations

import builtins
import sys
import warnings
from typing import Any

from .errors import ColabkitError, ColabkitWarning

__all__ = [
    "ShownOnce",
    "failed_setup",
    "not_finished_error",
    "setup_failed",
    "setup_finished",
    "shell",
    "show_once",
    "warnings_as_notes",
]

_KEEP = 8  # objects remembered as shown (kept alive, so their ids cannot be reused meanwhile)
_shown: list[tuple[Any, int]] = []  # (object, execution count of the cell that showed it)
_failed_setup: ColabkitError | None = None
_NOT_FINISHED = "setup() did not finish: run the cell above again after the fix"


def shell() -> Any:
    """The IPython shell this code runs in, or None (a plain Python, a half-torn-down kernel)."""
    get_ipython = getattr(builtins, "get_ipython", None)
    if get_ipython is None:
        return None
    try:
        return get_ipython()
    except Exception:
        return None


def _cell() -> int | None:
    ip = shell()
    count = getattr(ip, "execution_count", None)
    return count if isinstance(count, int) else None


def show_once(obj: Any, bundle: dict[str, str]) -> None:
    """Display ``bundle`` (mime type → data) for ``obj`` now; the same object as the cell's result shows nothing more."""
    from IPython.display import display

    display(bundle, raw=True)
    cell = _cell()
    if cell is not None:
        _shown.append((obj, cell))
        del _shown[:-_KEEP]


def _shown_in_this_cell(obj: Any) -> bool:
    cell = _cell()
    return cell is not None and any(o is obj and c == cell for o, c in _shown)


class ShownOnce:
    """A result that a call already displayed: as the cell's last line it is not displayed a second time.

    The class provides ``_bundle()`` (mime type → data); in a later cell the object displays as usual.
    """

    def _bundle(self) -> dict[str, str]:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _ipython_display_(self) -> None:
        if _shown_in_this_cell(self):
            return
        from IPython.display import display

        display(self._bundle(), raw=True)


# -- warnings --------------------------------------------------------------------------------------
_original_showwarning: Any = None


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    if isinstance(category, type) and issubclass(category, ColabkitWarning):
        out = sys.stdout if file is None else file
        try:
            out.write(f"colabkit: {message}\n")
        except (OSError, ValueError):
            pass
        return
    _original_showwarning(message, category, filename, lineno, file, line)


def warnings_as_notes() -> None:
    """In a notebook, show a ``ColabkitWarning`` as one line ``colabkit: <message>`` (not the raw warnings
    format with ``/tmp/ipykernel_…py:2:`` and the echoed source); other warnings are left as they are."""
    global _original_showwarning
    if shell() is None or warnings.showwarning is _show_warning:
        return
    _original_showwarning = warnings.showwarning
    warnings.showwarning = _show_warning


# -- a setup() that failed -------------------------------------------------------------------------
def failed_setup() -> ColabkitError | None:
    """The error of the last ``setup()`` of this process, if it did not finish (and none finished since)."""
    return _failed_setup


def not_finished_error(after: str) -> ColabkitError:
    """The error a call makes when it cannot work because the last ``setup()`` did not finish."""
    cause = _failed_setup
    fix = cause.hint if cause is not None and cause.hint else None
    return ColabkitError(
        f"{_NOT_FINISHED} ({type(cause).__name__}: {cause.message})" if cause is not None else _NOT_FINISHED,
        f"{fix} Then run the setup() cell again, and this one ({after})." if fix else f"Run the setup() cell again, then this one ({after}).",
    )


def _name_error_handler(ip: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> Any:
    """Shows a NameError as IPython does, then says that the setup() above did not finish."""
    stb = ip.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset)
    if _failed_setup is not None:
        stb = [*stb, f"colabkit: {_NOT_FINISHED} ({type(_failed_setup).__name__}), so names it defines are missing"]
    ip._showtraceback(etype, value, stb)
    return stb


def setup_failed(exc: ColabkitError) -> None:
    """Remember that ``setup()`` raised ``exc``; in a notebook, a NameError in a later cell then says so."""
    global _failed_setup
    _failed_setup = exc
    ip = shell()
    if ip is not None and hasattr(ip, "set_custom_exc") and not getattr(ip, "custom_exceptions", ()):
        ip.set_custom_exc((NameError,), _name_error_handler)


def setup_finished() -> None:
    """``setup()`` finished: forget an earlier failure and take back the NameError note."""
    global _failed_setup
    _failed_setup = None
    ip = shell()
    if ip is not None and getattr(ip, "custom_exceptions", ()) == (NameError,):
        ip.set_custom_exc((), None)
