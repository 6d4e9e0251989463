"""Paths written into saved files are absolute, so a suite works from any working directory.

A user types ``--model ./my-model`` or ``--dataset corpus.txt``; a later ``saescope steer`` or
``eval --recompute`` run from another folder would read that as a hub id or a missing file. What
names an existing local file or folder is therefore stored resolved, and what the user typed is kept
beside it (``given``). Hub ids, built-in names and anything that does not exist locally pass through.
"""

from __future__ import annotations

from pathlib import Path


def absolute_if_local(value: str | None) -> str | None:
    """``value`` resolved to an absolute path if it names an existing local file or folder, else unchanged."""
    if not value:
        return value
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value
