"""Fake ``kaggle_secrets`` (Kaggle/docker-python ``patches/kaggle_secrets.py``): the real classes, signatures and
messages, answered from the environment instead of Kaggle's service.

- ``KAGGLE_USER_SECRETS_TOKEN``: unset → ``UserSecretsClient()`` raises ``CredentialError`` as the real one does.
- ``FAKE_KAGGLE_SECRETS``: JSON ``{"label": "value"}``, the secrets attached to this notebook; another label gets
  the service's ``wasSuccessful: false`` answer as a ``BackendError``.
- ``FAKE_KAGGLE_NET=off``: the service cannot be reached (Internet off) → ``ConnectionError``.
- ``FAKE_KAGGLE_AUTH=unauthenticated``: the service refuses the notebook's token (``errors: ['Unauthenticated']``,
  code 16) → ``BackendError``, as it answers an expired or foreign token.

Every ``get_secret`` is logged to ``$COLABKIT_SYSROOT/kaggle-fake-calls.log`` (label only, never a value).
"""

import json
import os
from pathlib import Path

_KAGGLE_USER_SECRETS_TOKEN_ENV_VAR_NAME = "KAGGLE_USER_SECRETS_TOKEN"
TIMEOUT_SECS = 40


class CredentialError(Exception):
    pass


class BackendError(Exception):
    pass


class ValidationError(Exception):
    pass


def _log(line):
    root = Path(os.environ.get("COLABKIT_SYSROOT") or "/nonexistent")
    if root.is_dir():
        with open(root / "kaggle-fake-calls.log", "a") as fh:
            fh.write(line + "\n")


class UserSecretsClient:
    GET_USER_SECRET_BY_LABEL_ENDPOINT = "/requests/GetUserSecretByLabelRequest"

    def __init__(self):
        self.url_base = os.getenv("KAGGLE_URL_BASE") or "https://www.kaggle.com"
        self.jwt_token = os.getenv(_KAGGLE_USER_SECRETS_TOKEN_ENV_VAR_NAME)
        if self.jwt_token is None:
            raise CredentialError(
                "A JWT Token is required to use the UserSecretsClient, "
                f"but none found in environment variable {_KAGGLE_USER_SECRETS_TOKEN_ENV_VAR_NAME}"
            )

    def get_secret(self, label) -> str:
        if label is None or len(label) == 0:
            raise ValidationError("Label must be non-empty.")
        _log(f"get_secret {label}")
        if os.environ.get("FAKE_KAGGLE_NET") == "off":
            raise ConnectionError("Connection error trying to communicate with service.")
        if os.environ.get("FAKE_KAGGLE_AUTH") == "unauthenticated":
            response = {"errors": ["Unauthenticated"], "error": {"code": 16}, "wasSuccessful": False}
            raise BackendError(f"Unexpected response from the service. Response: {response}.")
        attached = json.loads(os.environ.get("FAKE_KAGGLE_SECRETS") or "{}")
        if label not in attached:
            response = {
                "errors": [f"No user secrets exist for kernel id 12345 and label {label}."],
                "error": {"code": 5},
                "wasSuccessful": False,
            }
            raise BackendError(f"Unexpected response from the service. Response: {response}.")
        return attached[label]
