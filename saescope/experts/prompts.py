"""Prompt sets for expert profiling and evaluation: a .txt file (one prompt per line) or a .jsonl
file (one object per line with a text field), or a list of strings in the Python API."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from saescope.errors import InvalidInput, MissingFile


def read_prompts(source: str | Path | Sequence[str], text_field: str = "text", where: str = "prompts") -> list[str]:
    """The prompts of ``source``; blank lines are skipped. Raises naming the file when it holds none."""
    if not isinstance(source, (str, Path)):
        prompts = [str(p) for p in source if str(p).strip()]
        if not prompts:
            raise InvalidInput(f"{where}: the prompt list is empty")
        return prompts
    path = Path(source)
    if not path.is_file():
        raise MissingFile(f"{where}: {path} does not exist (give a .txt file with one prompt per line, or a .jsonl file)")
    if path.suffix == ".jsonl":
        from saescope.data.text import jsonl_documents

        prompts = [p for p in jsonl_documents(path, text_field) if p.strip()]
    elif path.suffix in (".txt", ""):
        try:
            prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as error:
            raise InvalidInput(f"{path}: not UTF-8 text (byte {error.start}); give one prompt per line") from None
    else:
        raise InvalidInput(f"{path}: unsupported file type {path.suffix!r}; use .txt (one prompt per line) or .jsonl")
    if not prompts:
        raise InvalidInput(f"{path}: no prompts in this file ({where})")
    return prompts
