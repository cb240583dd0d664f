"""The version of colabkit, read by the build (pyproject.toml) and by ``colabkit --version``."""

__version__ = "0.1.0"
