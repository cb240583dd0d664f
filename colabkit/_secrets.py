"""Secrets for a run: each name from the first source that has it, into the script's environment only, and
masked wherever the script's output goes.

The sources, in order: Colab's secrets (``google.colab.userdata``, through ``_colab``), Kaggle's
(``kaggle_secrets``, through ``_kaggle``), the environment, and a ``.env`` file in the project. A
source that cannot answer here is skipped with the reason: Colab's secrets need the Colab web UI, so a
kernel driven by VS Code or google-colab-cli skips them at once, and one whose ``userdata.get`` timed out
(10 s: nobody answered) skips them for the rest of the process. A value never appears in a repr, a
message, an error, ``summary.json`` or on a command line; :class:`Masker` replaces it in the script's
output as the stream passes, also when one occurrence arrives split across two reads.
"""

from __future__ import annotations

import os
import re
import stat
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from . import _display, _mounts, _runtime
from .errors import ColabkitWarning, SecretNotFound

__all__ = [
    "KNOWN_NAMES",
    "MASK",
    "SOURCES",
    "Answer",
    "Masker",
    "Secret",
    "Secrets",
    "check_names",
    "default_sources",
    "doctor_rows",
    "dotenv_path",
    "dotenv_tracked",
    "forget",
    "verdict",
    "read_dotenv",
    "resolve",
]

SOURCES = ("colab", "kaggle", "env", "dotenv")
MASK = "***"
DOTENV = ".env"
SHORT_VALUE = 6  # a value shorter than this also hides ordinary text wherever it is masked
# names doctor() looks for in the environment and .env beside the ones asked for in this process
KNOWN_NAMES = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "WANDB_API_KEY",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "KAGGLE_KEY",
    "GITHUB_TOKEN",
    "COMET_API_KEY",
    "NEPTUNE_API_TOKEN",
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WHERE = {"colab": "Colab secrets", "kaggle": "Kaggle secrets", "env": "the environment"}
_NO_BROWSER = {
    "vscode": "this kernel is driven by the Colab VS Code extension",
    "headless": "no browser is behind this kernel (google-colab-cli or another kernel client)",
    "terminal": "this is not a notebook kernel",
}

_lock = threading.Lock()
_cache: dict[str, Secret] = {}  # answers of the slow sources (Colab, Kaggle), for the rest of the process
_said: set[str] = set()  # notes and warnings given once per process


class Answer(NamedTuple):
    """What one source said about one name: ``status`` ``"ok"`` (``value`` holds it) or why not."""

    status: str  # ok | missing | no_access | timeout | skip | unavailable | offline | error
    value: str | None = None
    detail: str = ""


Source = Callable[[str], Answer]


@dataclass(frozen=True)
class Secret:
    """One secret found: its ``name``, the ``source`` (``"colab"``, ``"kaggle"``, ``"env"``, ``"dotenv"``) and
    ``where`` in words. The value is in ``value`` and in no repr."""

    name: str
    source: str
    where: str
    value: str = field(repr=False, compare=False)

    def __repr__(self) -> str:
        return f"<Secret {self.name} from {self.where}>"

    __str__ = __repr__


@dataclass(frozen=True)
class Secrets:
    """The secrets of one run: ``env()`` for the script's environment, ``masker()`` for its output."""

    items: tuple[Secret, ...] = ()

    def env(self) -> dict[str, str]:
        return {s.name: s.value for s in self.items}

    def sources(self) -> dict[str, str]:
        """Name → source, the part that may be recorded (``summary.json``) and shown."""
        return {s.name: s.source for s in self.items}

    def masker(self, *, binary: bool = False) -> Masker:
        return Masker((s.value for s in self.items), binary=binary)

    def mask(self, text: str) -> str:
        """``text`` with every value replaced by ``***`` (whole texts: arguments, messages)."""
        return Masker(s.value for s in self.items).mask(text)

    def describe(self) -> str:
        """``HF_TOKEN (Colab secrets), WANDB_API_KEY (the environment)``."""
        return ", ".join(f"{s.name} ({s.where})" for s in self.items) or "none"

    def __repr__(self) -> str:
        return f"<Secrets {self.describe()}>"

    def __bool__(self) -> bool:
        return bool(self.items)


class Masker:
    """Replaces secret values in a stream, also when one occurrence is split across two pieces.

    :meth:`feed` returns what can be shown now and holds back the longest end of the stream that could
    still begin a value; :meth:`flush` gives that back at the end (it never holds a whole value). With
    ``binary=True`` it takes and returns ``bytes`` (the values as UTF-8), for a log kept byte for byte.

    Examples:
        >>> m = Masker(["hf_abcdef"])
        >>> m.feed("token hf_ab"), m.feed("cdef!\\n"), m.flush()
        ('token ', '***!\\n', '')
    """

    def __init__(self, values: Iterable[str], replacement: str = MASK, *, binary: bool = False) -> None:
        texts = sorted({v for v in values if v}, key=len, reverse=True)
        self.binary = binary
        ordered: list[Any] = [v.encode("utf-8") for v in texts] if binary else texts
        self.replacement: Any = replacement.encode("utf-8") if binary else replacement
        joined = (b"|" if binary else "|").join(re.escape(v) for v in ordered)
        self._pattern = re.compile(joined) if ordered else None
        self._prefixes = {v[:i] for v in ordered for i in range(1, len(v))}
        self._longest = max((len(v) for v in ordered), default=0)
        self._held: Any = b"" if binary else ""

    def __bool__(self) -> bool:
        return self._pattern is not None

    def mask(self, text: Any) -> Any:
        """One whole text (or ``bytes``), masked, nothing held back."""
        return self._pattern.sub(self.replacement, text) if self._pattern is not None else text

    def feed(self, text: Any) -> Any:
        """The next piece of the stream: what may be shown of it (and of what was held) now."""
        if self._pattern is None:
            return text
        text = self._pattern.sub(self.replacement, self._held + text)
        keep = 0
        for size in range(min(len(text), self._longest - 1), 0, -1):
            if text[-size:] in self._prefixes:
                keep = size
                break
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> Any:
        """What is still held back, at the end of the stream."""
        held, self._held = self._held, self._held[:0]
        return held


# -- the sources -------------------------------------------------------------------------------------


def _colab_source(rt: _runtime.Runtime) -> Source:
    """Colab's secrets panel, asked through ``google.colab.userdata`` (its own 10 s timeout)."""

    def ask(name: str) -> Answer:
        current = _runtime.detect_runtime().front_end or rt.front_end
        if current in _NO_BROWSER:
            return Answer("skip", detail=f"Colab secrets need the Colab web UI, and {_NO_BROWSER[current]}")
        from . import _colab

        status, value = _colab.userdata_lookup(name)
        if status == "timeout":
            # nobody answered for 10 s: no browser behind this kernel; later names skip at once
            _runtime.remember_front_end("headless")
            _once(
                "colab-timeout",
                "colabkit: Colab secrets did not answer within 10 s (they can only be read from the Colab web "
                "UI): going on with the next source",
            )
            return Answer("timeout", detail="did not answer within 10 s (no Colab web UI behind this kernel)")
        if status == "ok":
            return Answer("ok", value, "Colab secrets")
        details = {
            "missing": "not in Colab secrets",
            "no_access": "in Colab secrets, but this notebook has no access to it",
            "unavailable": "google.colab is not importable here",
        }
        return Answer(status, detail=details.get(status, "Colab secrets failed"))

    return ask


def _kaggle_source(name: str) -> Answer:
    from . import _kaggle

    status, value, detail = _kaggle.secret_lookup(name)
    return Answer(status, value, detail)


def _env_source(environ: dict[str, str] | None = None) -> Source:
    def ask(name: str) -> Answer:
        env = os.environ if environ is None else environ
        value = env.get(name)
        return Answer("ok", value, "the environment") if value else Answer("missing", detail="not set")

    return ask


def dotenv_path(project: Path | None) -> Path | None:
    """The project's ``.env``, or ``None`` without a project."""
    return project / DOTENV if project is not None else None


def _unquote(raw: str) -> str:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1]
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return raw[1:-1].replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
    if " #" in raw:  # an unquoted value ends where a comment begins
        raw = raw.split(" #", 1)[0]
    return raw.strip()


def read_dotenv(path: Path) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of a ``.env`` file (``export`` prefixes, quotes and comments allowed).

    Warns once (``ColabkitWarning``) when other users of the machine may read it. A file that cannot be
    read gives ``{}``.
    """
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError):
        return {}
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        key = f"world-readable:{path}"
        if key not in _said:
            _said.add(key)
            warnings.warn(
                f"{path} holds secrets and every user of this machine may read it (mode {stat.filemode(mode)}): "
                f"run chmod 600 {path}",
                ColabkitWarning,
                stacklevel=4,
            )
    found: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        key = key.strip()
        if key.startswith("export "):
            key = key[len("export ") :].strip()
        if _NAME.fullmatch(key):
            found[key] = _unquote(raw)
    return found


def _dotenv_source(path: Path) -> Source:
    def ask(name: str) -> Answer:
        if not _mounts.reachable(path.parent):
            return Answer("unavailable", detail=f"{path.parent} does not answer (Drive hung or dead)")
        if not path.is_file():
            return Answer("missing", detail=f"no {path}")
        value = read_dotenv(path).get(name)
        return Answer("ok", value, str(path)) if value else Answer("missing", detail=f"not in {path}")

    return ask


def default_sources(rt: _runtime.Runtime | None = None, project: Path | None = None) -> tuple[tuple[str, Source], ...]:
    """The sources for this runtime, in order: Colab's or Kaggle's secrets, the environment, the project's ``.env``."""
    rt = rt if rt is not None else _runtime.detect_runtime()
    chain: list[tuple[str, Source]] = []
    if rt.is_colab:
        chain.append(("colab", _colab_source(rt)))
    elif rt.is_kaggle:
        chain.append(("kaggle", _kaggle_source))
    chain.append(("env", _env_source()))
    path = dotenv_path(project if project is not None else _project_path())
    if path is not None:
        chain.append(("dotenv", _dotenv_source(path)))
    return tuple(chain)


def _project_path() -> Path | None:
    """The open project's folder, else the current folder (``colabkit run`` in a project, a notebook's cwd)."""
    from . import _project

    current = _project.current_project()
    if current is not None:
        return Path(current.path)
    try:
        return Path.cwd()
    except OSError:  # the working folder was deleted, or is on a Drive that died
        return None


# -- resolving -------------------------------------------------------------------------------------


def _once(key: str, text: str) -> None:
    if key not in _said:
        _said.add(key)
        _display.note(text)


def check_names(names: Sequence[str]) -> tuple[str, ...]:
    """The names, checked (environment variable names) and without repeats."""
    if isinstance(names, str):
        raise TypeError(f"secrets={names!r}: pass a list of names, e.g. secrets=[{names!r}]")
    out = []
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"secret name {name!r}: use an environment variable name such as 'HF_TOKEN'")
        if name not in out:
            out.append(name)
    return tuple(out)


def resolve(
    names: Sequence[str],
    *,
    sources: Sequence[tuple[str, Source]] | None = None,
    runtime: _runtime.Runtime | None = None,
    project: Path | None = None,
) -> Secrets:
    """Find each secret in the first source that has it.

    Args:
        names: environment variable names, e.g. ``["HF_TOKEN", "WANDB_API_KEY"]``.
        sources: ``(source, ask)`` pairs to ask in order (tests); default :func:`default_sources`.
        runtime: the runtime to choose the sources and the fix for (default: detected now).
        project: the folder whose ``.env`` is read (default: the open project).

    Returns:
        The ``Secrets``, in the order asked.

    Raises:
        SecretNotFound: a name is in no source; ``tried`` says what each source answered and the hint how
            to set it on this runtime.
        ValueError: a name that cannot be an environment variable.
    """
    wanted = check_names(names)
    rt = runtime if runtime is not None else _runtime.detect_runtime()
    chain = tuple(sources) if sources is not None else default_sources(rt, project)
    found: list[Secret] = []
    with _lock:
        for name in wanted:
            cached = _cache.get(name)
            if cached is not None and sources is None:
                found.append(cached)
                continue
            found.append(_find(name, chain, rt, project, remember=sources is None))
    for secret in found:
        if len(secret.value) < SHORT_VALUE:
            _once(
                f"short:{secret.name}",
                f"colabkit: {secret.name} is only {len(secret.value)} characters long: masking it in the output "
                "also hides every other occurrence of those characters",
            )
    return Secrets(tuple(found))


def _find(
    name: str, chain: Sequence[tuple[str, Source]], rt: _runtime.Runtime, project: Path | None, *, remember: bool
) -> Secret:
    tried: list[tuple[str, str]] = []
    for source, ask in chain:
        try:
            answer = ask(name)
        except Exception as exc:  # a source that breaks is one that does not have it
            answer = Answer("error", detail=f"{type(exc).__name__} while asking")
        if answer.status == "ok" and answer.value:
            secret = Secret(name, source, _WHERE.get(source, answer.detail), answer.value)
            if remember and source in ("colab", "kaggle"):
                _cache[name] = secret
            return secret
        tried.append((source, answer.detail or answer.status))
    raise _not_found(name, tuple(tried), rt, project)


def _not_found(name: str, tried: tuple[tuple[str, str], ...], rt: _runtime.Runtime, project: Path | None) -> SecretNotFound:
    said = "; ".join(f"{_WHERE.get(s, '.env')}: {why}" for s, why in tried)
    dotenv = dotenv_path(project if project is not None else _project_path())
    file = str(dotenv) if dotenv is not None else "a .env file in the project folder"
    in_file = f"or put {name}=... in {file} (chmod 600 it; colabkit reads it, never copies or commits it)"
    by_hand = f"{in_file}, or set os.environ[{name!r}] = getpass.getpass() in a cell"
    no_access = any(s == "colab" and "no access" in why for s, why in tried)
    if rt.is_kaggle:
        hint = (
            f"In the notebook editor open Add-ons → Secrets, add {name} and tick it for this notebook, {by_hand}."
        )
    elif rt.is_colab and no_access:
        hint = (
            f"Open the key icon (Secrets) in Colab's left sidebar and turn on Notebook access for {name}, then "
            f"run the cell again; {by_hand}."
        )
    elif rt.is_colab and (rt.front_end == "vscode"):
        hint = f"Colab secrets can only be read from the Colab web UI, not from VS Code: {by_hand.removeprefix('or ')}."
    elif rt.is_colab and rt.front_end in ("headless", "terminal"):
        hint = (
            "Colab secrets can only be read from the Colab web UI. Upload a .env file instead "
            f"(google-colab-cli: colab upload .env {file}), {by_hand}."
        )
    elif rt.is_colab:
        hint = f"Add it in Colab's Secrets panel (the key icon in the left sidebar) with Notebook access on, {by_hand}."
    else:
        hint = f"Set it in the environment (export {name}=...) {by_hand}."
    cli_hint = hint.replace(f"os.environ[{name!r}] = getpass.getpass() in a cell", f"export {name}=... first")
    if not rt.is_colab and not rt.is_kaggle:  # the terminal's way is said first already: once is enough
        cli_hint = f"Set it in the environment (export {name}=... first) {in_file}."
    return SecretNotFound(f"secret {name} was not found ({said})", hint, name=name, tried=tried, cli_hint=cli_hint)


def forget() -> None:
    """Forget the secrets found so far and the notes given (a test; or a secret that changed at its source)."""
    with _lock:
        _cache.clear()
        _said.clear()


# -- doctor ------------------------------------------------------------------------------------------


def doctor_rows(project: Path | None = None) -> list[tuple[str, str]]:
    """Which secrets are set and where from, never their values: ``[(name, where), ...]``.

    Lists the secrets found in this process (Colab's and Kaggle's can only be asked by name, so those
    appear once ``setup(secrets=...)`` or ``run(secrets=...)`` asked), then well-known names
    (:data:`KNOWN_NAMES`) in the environment, then every name in the project's ``.env``.
    """
    rows: dict[str, str] = {name: secret.where for name, secret in sorted(_cache.items())}
    for name in KNOWN_NAMES:
        if name not in rows and os.environ.get(name):
            rows[name] = _WHERE["env"]
    path = dotenv_path(project if project is not None else _project_path())
    if path is not None and _mounts.reachable(path.parent) and path.is_file():
        for name, value in read_dotenv(path).items():
            if value and name not in rows:
                rows[name] = str(path)
    return list(rows.items())


def dotenv_tracked(project: Path) -> bool:
    """Whether the project is a git checkout whose ``.gitignore`` does not name ``.env`` (it could be committed)."""
    if not (project / ".git").exists() or not (project / DOTENV).is_file():
        return False
    try:
        lines = (project / ".gitignore").read_text(encoding="utf-8").splitlines()
    except OSError:
        return True
    patterns = {line.strip().lstrip("/") for line in lines}
    return not patterns & {".env", ".env*", "*.env", ".env.*"}


def verdict(rt: _runtime.Runtime | None = None, project: Path | None = None) -> tuple[str, str, str | None]:
    """``doctor()``'s secrets check: ``(status, detail, fix)``, naming secrets and sources, never a value.

    Warns about a project ``.env`` other users may read or git could commit.
    """
    rt = rt if rt is not None else _runtime.detect_runtime()
    project = project if project is not None else _project_path()
    with warnings.catch_warnings():  # said here as the check's own warning instead
        warnings.simplefilter("ignore", ColabkitWarning)
        rows = doctor_rows(project)
    detail = ", ".join(f"{name} from {where}" for name, where in rows) or (
        "none found yet (Colab's and Kaggle's secrets are read by name: setup(secrets=[...]) or run(secrets=[...]) "
        "in a notebook, colabkit run --secret NAME in a terminal)"
    )
    if rt.is_colab and rt.front_end in _NO_BROWSER:
        detail += f"; Colab secrets cannot be read here ({_NO_BROWSER[rt.front_end]}): use the environment or .env"
    path = dotenv_path(project)
    if path is not None and _mounts.reachable(path.parent) and path.is_file():
        mode = path.stat().st_mode
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            return "warn", f"{detail}; {path} may be read by every user here ({stat.filemode(mode)})", f"chmod 600 {path}"
        if project is not None and dotenv_tracked(project):
            return "warn", f"{detail}; {path} is not in .gitignore", f"add .env to {project / '.gitignore'} so git never commits it"
    return "ok", detail, None

