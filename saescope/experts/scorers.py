"""Does a generated text show the behaviour? A scorer maps text to True/False.

Three kinds, as ``saescope experts evaluate`` takes them:

- a regular expression (``--regex``), matched case-insensitively anywhere in the text;
- a phrase list (``--phrases FILE``, one phrase per line), any phrase contained, case-insensitive;
- a Python callable (``--scorer module:function``, or any callable in the API) returning a bool.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from saescope.errors import InvalidInput, MissingFile

Scorer = Callable[[str], bool]


def regex_scorer(pattern: str) -> Scorer:
    try:
        compiled = re.compile(pattern, re.IGNORECASE)
    except re.error as error:
        raise InvalidInput(f"--regex {pattern!r}: not a valid regular expression ({error})") from None
    return lambda text: compiled.search(text) is not None


def phrase_scorer(phrases: Sequence[str] | str | Path) -> Scorer:
    if isinstance(phrases, (str, Path)):
        path = Path(phrases)
        if not path.is_file():
            raise MissingFile(f"--phrases {path}: no such file (one phrase per line)")
        phrases = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not phrases:
            raise InvalidInput(f"--phrases {path}: no phrases in this file")
    lowered = [phrase.lower() for phrase in phrases]
    return lambda text: any(phrase in text.lower() for phrase in lowered)


def callable_scorer(spec: str) -> Scorer:
    """``"package.module:function"`` imported; the function takes the generated text."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise InvalidInput(f"--scorer {spec!r}: expected MODULE:FUNCTION, e.g. my_scorers:is_refusal")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise InvalidInput(f"--scorer {spec!r}: cannot import {module_name!r} ({error}); is it on PYTHONPATH?") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise InvalidInput(f"--scorer {spec!r}: {module_name} has no callable {name!r}")
    return lambda text: bool(function(text))


def make_scorer(regex: str | None = None, phrases: Sequence[str] | str | Path | None = None,
                scorer: str | Scorer | None = None) -> Scorer:
    """Exactly one of the three; raises naming the flags otherwise."""
    given = [value for value in (regex, phrases, scorer) if value is not None]
    if len(given) != 1:
        raise InvalidInput("give exactly one behaviour scorer: --regex PATTERN, --phrases FILE or --scorer MODULE:FUNCTION")
    if regex is not None:
        return regex_scorer(regex)
    if phrases is not None:
        return phrase_scorer(phrases)
    return scorer if callable(scorer) else callable_scorer(str(scorer))
