"""The one error family for user mistakes: a bad file, argument, config or input.

Every message names the file or argument at fault and says what to do. The command line catches
``SaescopeError`` once, in ``cli.main``, and prints it as one ``error:`` line; any other exception is a
bug and keeps its traceback. Each class also derives from the built-in error it refines, so code that
catches ``ValueError`` or ``FileNotFoundError`` keeps working.
"""

from __future__ import annotations


class SaescopeError(Exception):
    """A mistake the user can fix (the message says how)."""


class InvalidInput(SaescopeError, ValueError):
    """A bad argument, config field, data set or file content."""


class WrongType(SaescopeError, TypeError):
    """Data of the wrong type (integer activations, a config value that is not a number)."""


class MissingFile(SaescopeError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class AlreadyExists(SaescopeError, FileExistsError):
    """An output that would overwrite existing results."""


class Diverged(SaescopeError, FloatingPointError):
    """Training produced a non-finite loss; the message names the setting to change."""


class InsufficientResources(SaescopeError, MemoryError):
    """A run that the preflight estimate says cannot fit in memory."""


class InsufficientDisk(SaescopeError, OSError):
    """A run that the preflight estimate says cannot fit on disk."""


class MissingDependency(SaescopeError, ImportError):
    """An optional package that this feature needs is not installed."""


class PortInUse(SaescopeError, OSError):
    """The browser server could not bind its address."""


class Interrupted(SaescopeError):
    """The user pressed Ctrl-C; the message says what was saved and how to continue."""
