"""Fake ``google.colab.runtime``: ``unassign()`` records that the VM was given back."""

import os

from google.colab import _log
from google.colab.errors import RuntimeManagementError


def unassign():
    _log.record("runtime.unassign")
    if not os.environ.get("TBE_RUNTIME_ADDR"):
        raise RuntimeManagementError("Unable to find the runtime management service.")
    if os.environ.get("FAKE_COLAB_UNASSIGN") == "refuse":
        raise RuntimeManagementError("Unable to request VM unassignment.")
    (_log.sysroot() / "var/colab/unassigned").write_text("1\n")
