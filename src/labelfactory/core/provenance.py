"""Where an artefact came from: code version and command line, for sidecars."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from labelfactory import __version__


def code_version() -> str:
    """Package version plus the git commit (``+dirty`` when the tree has changes)."""
    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return __version__
    return f"{__version__}+g{commit[:12]}{'.dirty' if dirty else ''}"


def command_line() -> str:
    """The command that is running, as one could type it again."""
    return shlex.join(["python", *sys.argv])
