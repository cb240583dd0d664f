"""Fake ``google.colab.errors``."""


class Error(Exception):
    """Base class of google.colab errors."""


class AuthorizationError(Error):
    """Credentials could not be fetched."""


class RuntimeManagementError(Error):
    """The runtime management service failed."""
