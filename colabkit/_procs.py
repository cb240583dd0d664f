"""Is a process still there: the one liveness check behind stale temp files, locks and lost runs."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["CREATE_TIME_TOLERANCE_S", "alive"]

CREATE_TIME_TOLERANCE_S = 0.05  # psutil's create_time of one process is stable to well under this


def alive(pid: Any, create_time: Any = None) -> bool:
    """True when a process with this pid exists and, if ``create_time`` is a number, started then.

    The create time (psutil's ``Process.create_time()``, recorded when the process started) tells a
    recycled pid from the original; without it any process with the pid counts. A process we may not
    signal or look at counts as alive.

    Args:
        pid: The process id; anything but a positive int is no process.
        create_time: Its psutil create time in seconds since the epoch, or None (or any non-number)
            to check the pid alone.

    Returns:
        Whether the process is (still) there.

    Examples:
        >>> alive(os.getpid())
        True
    """
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but is not ours
        pass
    if not isinstance(create_time, (int, float)):
        return True
    import psutil

    try:
        actual = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.Error:  # exists, but we may not look at it
        return True
    return abs(actual - create_time) < CREATE_TIME_TOLERANCE_S
