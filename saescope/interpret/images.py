"""Vectors shown as images: decoder rows and top examples of SAEs trained on pixels.

A decoder row has signs, so it is drawn on a diverging scale centred on zero (red positive, blue
negative, white zero), each row scaled by its own largest magnitude; an input example is drawn in
grey levels between its own minimum and maximum. Shapes are ``HxW`` (grey) or ``HxWx3`` (colour,
channels last); ``parse_image_shape`` reads them from a flag.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np

from saescope.errors import InvalidInput


def parse_image_shape(text: str | tuple[int, ...], d_in: int | None = None) -> tuple[int, ...]:
    """``"28x28"`` → (28, 28); ``"32x32x3"`` → (32, 32, 3). With ``d_in``, the shape must hold exactly that many values."""
    if isinstance(text, tuple):
        shape = text
    else:
        try:
            shape = tuple(int(part) for part in str(text).lower().replace("×", "x").split("x"))
        except ValueError:
            raise InvalidInput(f"--image-shape {text!r}: write height x width, e.g. 28x28 (or 32x32x3 for colour)") from None
    if len(shape) not in (2, 3) or any(s <= 0 for s in shape) or (len(shape) == 3 and shape[2] not in (1, 3)):
        raise InvalidInput(f"--image-shape {text!r}: write height x width, e.g. 28x28 (or 32x32x3 for colour)")
    if d_in is not None and int(np.prod(shape)) != d_in:
        raise InvalidInput(f"--image-shape {text!r} holds {int(np.prod(shape))} values but the vectors have {d_in}; "
                           f"give a shape whose product is {d_in}")
    return shape


def signed_image(vector: Any, shape: tuple[int, ...]) -> np.ndarray:
    """An RGB uint8 image of a signed vector (a decoder row): red positive, blue negative, white zero."""
    values = np.asarray(vector, dtype=np.float64).reshape(shape)
    if values.ndim == 3:
        values = values.mean(axis=2)  # a colour decoder row: its mean over channels, still signed
    scale = np.abs(values).max()
    t = values / scale if scale > 0 else values
    red = np.where(t < 0, 1 + t, 1.0)
    green = 1 - np.abs(t)
    blue = np.where(t > 0, 1 - t, 1.0)
    return (np.stack([red, green, blue], axis=-1).clip(0, 1) * 255).round().astype(np.uint8)


def plain_image(vector: Any, shape: tuple[int, ...]) -> np.ndarray:
    """An RGB uint8 image of an input vector, stretched between its own minimum and maximum."""
    values = np.asarray(vector, dtype=np.float64).reshape(shape)
    low, high = values.min(), values.max()
    t = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if t.ndim == 2:
        t = np.repeat(t[..., None], 3, axis=2)
    elif t.shape[2] == 1:
        t = np.repeat(t, 3, axis=2)
    return (t * 255).round().astype(np.uint8)


def png_bytes(image: np.ndarray, scale: int = 1) -> bytes:
    """A PNG of an RGB uint8 image, each pixel repeated ``scale`` times each way (sharp when enlarged)."""
    from PIL import Image

    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_url(image: np.ndarray, scale: int = 1) -> str:
    """The image as a ``data:image/png;base64`` URL, for JSON the browser shows without another request."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image, scale)).decode("ascii")


def image_grid(images: list[np.ndarray], columns: int, gap: int = 1, background: int = 255) -> np.ndarray:
    """Equal-sized RGB images tiled row by row, ``gap`` pixels apart."""
    if not images:
        raise InvalidInput("image_grid: no images to tile")
    height, width = images[0].shape[:2]
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    grid = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), background, dtype=np.uint8)
    for n, image in enumerate(images):
        r, c = divmod(n, columns)
        grid[r * (height + gap): r * (height + gap) + height, c * (width + gap): c * (width + gap) + width] = image
    return grid


def decoder_grid(sae: Any, shape: tuple[int, ...], features: list[int], columns: int = 8, scale: int = 3) -> bytes:
    """A PNG grid of the decoder rows of ``features`` drawn as signed images."""
    rows = sae.W_dec.detach().float().cpu().numpy()
    bad = [f for f in features if not 0 <= f < rows.shape[0]]
    if bad:
        raise InvalidInput(f"features {bad[:5]} are out of range for an SAE with {rows.shape[0]} latents")
    parse_image_shape(shape, rows.shape[1])
    return png_bytes(image_grid([signed_image(rows[f], shape) for f in features], columns), scale)


def write_png(data: bytes, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out
