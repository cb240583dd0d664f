"""Fake ``google.colab`` for colabkit's tests: the real signatures, check order and messages, no frontend.

Scripted through environment variables read at call time:

- ``FAKE_COLAB_AUTH``: ``allow`` (default), ``refuse`` (credential propagation fails) or ``timeout``
  (the frontend never answers; the mount then fails with ``mount failed``).
- ``FAKE_DRIVEFS``: ``ok`` (default) or ``fail``; ``FAKE_DRIVEFS_ROOT_READ_MS``: how long reading the
  My Drive root takes: a mount whose ``timeout_ms`` is shorter fails with the timeout message.
- ``FAKE_DRIVEFS_FLUSH=fail``; ``FAKE_DRIVEFS_BACKING``: the folder served as Drive.
- ``FAKE_COLAB_UNASSIGN=refuse``; ``TBE_RUNTIME_ADDR`` must be set for ``runtime.unassign``.

Every call is logged, one line each, to ``$COLABKIT_SYSROOT/var/colab/fake-calls.log``.
"""

from google.colab import _message, drive, errors, runtime  # noqa: F401
