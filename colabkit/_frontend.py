"""Who is behind a Colab kernel: Colab in a browser, the Colab VS Code extension, google-colab-cli, or nobody,
and the fix for each when a step needs a person (Drive's consent, Colab's secrets).

Who answers what (docs/front-ends.md): the browser every frontend request; the VS Code extension (0.2.1 on)
Drive's consent through a dialog of its own, never a secret; google-colab-cli nothing, except inside its
``colab drivemount``; a shell on the VM has no kernel to ask through.

What the kernel can see without asking (``_runtime``): ``$COLABKIT_FRONTEND``; no notebook kernel at all
(a shell on the VM: ``colab console``, ``colab ssh``, ``!colabkit``); an ``execute_request`` whose
``metadata.cellId`` is a ``vscode-notebook-cell:`` URI (vscode-jupyter sends it with every cell). Colab
in a browser and google-colab-cli send nothing that tells them apart (docs/front-ends.md), so when it
matters colabkit asks once, with a short bounded probe that a browser answers at once and no other
client answers at all, and remembers the answer for the client session.
"""

from __future__ import annotations

from . import _runtime

__all__ = ["PROBE_S", "VSCODE_CONSENT", "answers_consent", "front_end", "mount_fix", "needs_browser"]

PROBE_S = 3.0  # Colab's web UI answers its frontend requests in well under a second


def front_end(*, probe: bool = True, timeout_s: float = PROBE_S) -> str | None:
    """What drives this Colab kernel: ``"browser"``, ``"vscode"``, ``"headless"``, ``"terminal"``; ``None`` off Colab.

    Asks the front end (a request only Colab's web UI answers, waiting at most ``timeout_s``) when the
    cheap signals do not tell and ``probe`` is true; without an answer either way it returns ``None``.
    """
    rt = _runtime.detect_runtime()
    if not rt.is_colab:
        return rt.front_end  # None, or what $COLABKIT_FRONTEND forces
    if rt.front_end is not None or not probe:
        return rt.front_end
    from . import _colab

    answered = _colab.frontend_answers(timeout_s)
    if answered is None:  # the probe could not be sent: say nothing rather than guess
        return None
    found = "browser" if answered else "headless"
    _runtime.remember_front_end(found)
    return found


# what the Colab VS Code extension shows when drive.mount asks for consent (its own dialog, then the browser)
VSCODE_CONSENT = (
    'VS Code asks "Permit ... to access your Google Drive files?": choose Connect to Google Drive, sign in in the '
    "browser it opens, then click Continue in VS Code"
)


def needs_browser(found: str | None) -> bool:
    """Whether Colab's own web UI is needed and absent there: Colab's secrets (``userdata``), ``eval_js``."""
    return found in ("vscode", "headless", "terminal")


def answers_consent(found: str | None) -> bool:
    """Whether someone answers drive.mount's consent request: the browser's popup, or the VS Code extension's dialog."""
    return found not in ("headless", "terminal")


def mount_fix(found: str | None, mountpoint: str = "/content/drive") -> tuple[str, str]:
    """How to mount Drive from this front end, for a Python caller and for the command line."""
    again = "then run this cell again: colabkit finds the mount and goes on"
    again_cli = "then run this command again: colabkit finds the mount and goes on"
    if found == "vscode":
        fix = (
            f"{VSCODE_CONSENT} (the Colab extension 0.2.1 or later asks; update an older one). Or open the command "
            'palette (Ctrl+Shift+P, on a Mac Cmd+Shift+P), run "Colab: Mount Google Drive to Server..." and run '
            "the cell it adds; "
        )
        return fix + again, fix + again_cli
    if found == "headless":
        fix = (
            f"From your own machine run `colab drivemount {mountpoint}` (google-colab-cli; add -s NAME for the "
            "session) and finish the sign-in it prints; "
        )
        return fix + again, fix + again_cli
    fix = (
        "Mount Drive from a notebook cell in the browser (colabkit.mount()), or with google-colab-cli run "
        "`colab drivemount` from your own machine; "
    )
    return fix + again, fix + again_cli
