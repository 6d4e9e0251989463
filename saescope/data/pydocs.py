"""The built-in corpus: Python's language reference (``pydoc_data.topics``) plus standard-library docstrings.

Every Python install carries it, so examples, tests and the demo need no download. Docstrings are
read with ``ast`` from the library's source files, never by importing modules (some stdlib imports
have side effects). Order is deterministic: topics by name, then files by path, then docstrings in
source order.
"""

from __future__ import annotations

import ast
import functools
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

# Folders under the stdlib that are tests, vendored packages or tools rather than library docs.
_SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "lib2to3", "__pycache__", "turtledemo", "ensurepip"}
_MIN_DOC_CHARS = 40


def pydoc_topics() -> Iterator[str]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name].strip()
        if text:
            yield text


def _docstrings(path: Path) -> Iterator[str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old files
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("_"):
            continue  # private helpers' docstrings are implementation notes, not documentation
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= _MIN_DOC_CHARS:
                yield doc


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        if not _SKIPPED_DIRS.intersection(path.relative_to(root).parts[:-1]):
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def stdlib_docstrings() -> Iterator[str]:
    """Public docstrings of the standard library, each once (inherited copies are skipped)."""
    seen: set[str] = set()
    for path in stdlib_files():
        for doc in _docstrings(path):
            if doc not in seen:
                seen.add(doc)
                yield doc


@functools.lru_cache(maxsize=1)
def _all_documents() -> tuple[str, ...]:
    return (*pydoc_topics(), *stdlib_docstrings())


def pydocs_documents() -> Iterator[str]:
    """The built-in corpus, one document per topic or docstring, in a fixed order.

    Parsing the standard library takes ~10 s, so the documents are kept for the life of the process.
    """
    return iter(_all_documents())
