"""One writer per output folder: an advisory lock file that names its holder.

Two runs into one ``--out`` (two suites, two array runs, two ``cache --resume``) would otherwise both
"succeed" while one silently overwrites the other's files. Every writer takes
``OUT/.saescope.lock`` for as long as it writes: the file is created atomically (``O_EXCL``) and
holds the pid, the host and what is running. A second writer stops with a message naming the
holder. A lock left by a process that no longer exists on this host is stale and is taken over with
a warning; a lock from another host cannot be checked, so the message says how to remove it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from saescope.errors import AlreadyExists, InvalidInput

LOCK_NAME = ".saescope.lock"
logger = logging.getLogger("saescope")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def _stale(holder: dict | None, path: Path) -> bool:
    """True when the lock's holder is certainly gone: a dead pid on this host, or an unreadable file older than a minute."""
    if holder is None:
        try:
            return time.time() - path.stat().st_mtime > 60
        except OSError:
            return True
    return holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) and not _alive(holder["pid"])


@contextmanager
def output_lock(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold ``folder``'s lock while the block runs (the folder is created); refuse if another writer holds it."""
    target = Path(folder)
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    path = target / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "what": what, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _attempt in range(3):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if _stale(holder, path):
                logger.warning("%s: taking over a stale lock (%s)", target, holder or "unreadable")
                path.unlink(missing_ok=True)
                continue
            who = f"pid {holder.get('pid')} on {holder.get('host')}, {holder.get('what')}, since {holder.get('started')}" if holder else "unknown"
            raise AlreadyExists(f"{target}: another saescope run is writing here ({who}); wait for it to finish, "
                                f"choose another folder, or if that run is gone, delete {path}") from None
        with os.fdopen(handle, "w") as file:
            json.dump(me, file)
        break
    else:
        raise AlreadyExists(f"{target}: could not take the lock {path}; delete it if no saescope run is writing here")
    try:
        yield path
    finally:
        if (_holder(path) or {}).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
        if created and not any(target.iterdir()):
            target.rmdir()  # a run refused before writing anything leaves no folder behind


def is_saescope_output(folder: Path) -> bool:
    """True when ``folder`` holds only what saescope writes: a suite, a checkpoint, SAE folders or a cache."""
    if (folder / "suite.json").is_file() or (folder / "checkpoint").is_dir() or (folder / "manifest.json").is_file():
        return True
    configs = list(folder.glob("cfg.json")) + list(folder.glob("*/cfg.json")) + list(folder.glob("*/*/cfg.json"))
    return any("saescope_version" in path.read_text(errors="replace") for path in configs)


def clear_output(folder: str | os.PathLike) -> None:
    """Remove an earlier saescope output at ``folder`` (for ``--overwrite``); refuse anything else."""
    target = Path(folder)
    if not target.exists() or not any(child.name != LOCK_NAME for child in target.iterdir()):
        return
    if not is_saescope_output(target):
        raise InvalidInput(f"--overwrite {target}: the folder does not hold a saescope output, so it is left alone; choose another --out")
    for child in target.iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
