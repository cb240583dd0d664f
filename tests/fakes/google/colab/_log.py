"""Call log of the fake, so tests can count what reached the "frontend" and DriveFS."""

import os
from pathlib import Path


def sysroot():
    return Path(os.environ.get("COLABKIT_SYSROOT") or "/")


def record(line):
    path = sysroot() / "var/colab/fake-calls.log"
    if path.parent.is_dir():
        with open(path, "a") as f:
            f.write(line + "\n")
