"""One way to write a file so that a crash never leaves it half-written (write, fsync, rename, fsync the
folder), and one way to read a JSON file back with an error that names it.

Every saescope writer (SAE folders, trainer state, suite index, activation-cache shards and manifest,
interpretation records, exports) goes through ``atomic_write``. The temporary name is unique per call
(process id and a random suffix), so two writers never share one; the rename is atomic on POSIX, so
a reader sees the old file or the new one, never a mixture.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saescope.errors import InvalidInput


def atomic_write(target: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)``, flush it to disk, then rename it over ``target``."""
    target = Path(target)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)
    return target


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    return atomic_write(target, lambda path: path.write_text(text, encoding="utf-8"))


def atomic_write_json(target: str | os.PathLike, value: Any, **dumps_options: Any) -> Path:
    return atomic_write_text(target, json.dumps(value, **dumps_options) + "\n")


def read_json(path: str | os.PathLike, hint: str = "") -> Any:
    """The parsed contents of ``path``; malformed JSON raises ``InvalidInput`` naming the file (and ``hint``: what to do)."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidInput(f"{path}: not valid JSON ({error}){'; ' + hint if hint else ''}") from None


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
