"""Fake ``google.colab._message``: the frontend request that asks the browser for Drive consent."""

import os

from google.colab import _log


class MessageError(RuntimeError):
    """An error answered by the Colab frontend."""


class RequestWouldHangIndefinitelyError(RuntimeError):
    """Raised when code asks the frontend without a timeout: in a test that would hang forever."""


def blocking_request(request_type, request="", timeout_sec=5, parent=None):
    if timeout_sec is None:
        raise RequestWouldHangIndefinitelyError(f"blocking_request({request_type!r}) without timeout_sec")
    _log.record(f"blocking_request {request_type} timeout_sec={timeout_sec:g}")
    mode = os.environ.get("FAKE_COLAB_AUTH", "allow")
    if mode == "refuse":
        raise MessageError("Error: credential propagation was unsuccessful")
    if mode == "timeout":
        return None
    return {}
