"""Fake ``google.colab._message``: the frontend requests (Drive consent, a secret, a cell's JavaScript).

``FAKE_COLAB_FRONTEND``: ``browser`` (default: Colab's web UI answers), ``vscode`` (the Colab VS Code extension,
0.2.1 or later: it answers ``request_auth`` only, through its own dialog, and a dismissed dialog as the error
"User cancelled <authType> authorization"; a secret or JavaScript gets no answer) or ``none`` (nobody answers,
as in ``colab exec`` of google-colab-cli: every request ends at its timeout with ``None``). The fake returns at
once instead of waiting out a timeout. ``FAKE_COLAB_AUTH`` scripts the Drive consent (see ``google.colab``),
``FAKE_COLAB_SECRETS`` (JSON ``{"name": "value"}``) the secrets panel and ``FAKE_COLAB_SECRETS_NO_ACCESS``
(comma-separated names) the secrets this notebook was not granted.
"""

import ast
import json
import os
import uuid

from google.colab import _log


class MessageError(RuntimeError):
    """An error answered by the Colab frontend."""


class RequestWouldHangIndefinitelyError(RuntimeError):
    """Raised when code asks the frontend without a timeout: in a test that would hang forever."""


_pending = {}  # request id -> (type, body) of requests sent and not yet read


def _front_end():
    return os.environ.get("FAKE_COLAB_FRONTEND", "browser")


def _answers(request_type):
    front_end = _front_end()
    if front_end == "vscode":  # colab-vscode answers colab_request of type request_auth and nothing else
        return request_type == "request_auth"
    return front_end != "none"


def _answer(request_type, request):
    if not _answers(request_type):
        return None
    if request_type == "GetSecret":
        secrets = json.loads(os.environ.get("FAKE_COLAB_SECRETS") or "{}")
        denied = {n.strip() for n in os.environ.get("FAKE_COLAB_SECRETS_NO_ACCESS", "").split(",") if n.strip()}
        key = request.get("key") if isinstance(request, dict) else None
        if key not in secrets:
            return {"exists": False}
        if key in denied:
            return {"exists": True, "access": False}
        return {"exists": True, "access": True, "payload": secrets[key]}
    if request_type == "cell_javascript_eval":
        return ast.literal_eval(request["script"])  # the fake evaluates constants only
    mode = os.environ.get("FAKE_COLAB_AUTH", "allow")
    if mode == "refuse" and _front_end() == "vscode":  # its dialog dismissed: the extension replies with an error
        raise MessageError(f"User cancelled {request.get('authType')} authorization")
    if mode == "refuse":
        raise MessageError("Error: credential propagation was unsuccessful")
    if mode == "timeout":
        return None
    return {}


def send_request(request_type, request_body, parent=None):
    request_id = str(uuid.uuid4())
    _pending[request_id] = (request_type, request_body)
    _log.record(f"send_request {request_type}")
    return request_id


def read_reply_from_input(message_id, timeout_sec=None):
    if not timeout_sec:
        raise RequestWouldHangIndefinitelyError(f"read_reply_from_input({message_id!r}) without timeout_sec")
    request_type, body = _pending.pop(message_id)
    _log.record(f"read_reply_from_input {request_type} timeout_sec={timeout_sec:g}")
    return _answer(request_type, body)


def blocking_request(request_type, request="", timeout_sec=5, parent=None):
    if timeout_sec is None:
        raise RequestWouldHangIndefinitelyError(f"blocking_request({request_type!r}) without timeout_sec")
    _log.record(f"blocking_request {request_type} timeout_sec={timeout_sec:g}")
    return _answer(request_type, request)
