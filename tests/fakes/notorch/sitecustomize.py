"""Makes the installed torch invisible to this interpreter, as on a machine without it.

Some tests describe a machine without PyTorch (``colabkit info`` saying "torch not installed"), while CI
installs torch's CPU build for the tests that need it. With ``$COLABKIT_TEST_HIDE_TORCH`` naming the folder
torch is installed in, and this folder first on ``PYTHONPATH``, every interpreter started in such a test
finds no ``torch`` there: the folder's path-entry finder is wrapped in one that does not find it (the
rest of the folder is found as before, and a fake torch elsewhere on ``sys.path`` still is).
``conftest.py`` does the same in the test process with :func:`hide`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

ENV = "COLABKIT_TEST_HIDE_TORCH"
HIDDEN = ("torch",)


class Without:
    """A path-entry finder that finds everything its inner one does except the packages in ``HIDDEN``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def find_spec(self, fullname: str, target: Any = None) -> Any:
        if fullname.split(".")[0] in HIDDEN:
            return None
        return self.inner.find_spec(fullname, target)

    def invalidate_caches(self) -> None:
        if hasattr(self.inner, "invalidate_caches"):
            self.inner.invalidate_caches()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def hide(site: str) -> tuple[str, Any]:
    """Wrap ``site``'s finder; returns ``(site, the finder it had)`` to put back."""
    before = sys.path_importer_cache.get(site)
    inner = before
    if inner is None or isinstance(inner, Without):
        inner = inner.inner if isinstance(inner, Without) else None
        for hook in sys.path_hooks:
            try:
                inner = hook(site)
                break
            except ImportError:
                continue
    sys.path_importer_cache[site] = Without(inner)
    return site, before


if os.environ.get(ENV):
    hide(os.environ[ENV])
