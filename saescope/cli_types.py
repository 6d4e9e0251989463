"""argparse types for the command line: numbers that must be finite and in range, so 0 never silently means 'default'."""

from __future__ import annotations

import argparse
import math
from typing import Any


def number(kind: type, low: float | None = None, low_inclusive: bool = True, high: float | None = None) -> Any:
    """An argparse type that refuses non-finite and out-of-range values, so 0 never silently means 'default'."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if low is not None and (value < low or (value == low and not low_inclusive)):
            raise argparse.ArgumentTypeError(f"must be {'at least' if low_inclusive else 'greater than'} {low:g}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:g}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = number(int, 1)
non_negative_int = number(int, 0)
finite_float = number(float)
positive_float = number(float, 0, low_inclusive=False)
fraction = number(float, 0, high=1)
