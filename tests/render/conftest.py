"""Shared helpers for render/ tests: the pydicom-data corpus and synthetic images."""
from __future__ import annotations

import os

import numpy as np
import pytest

import data_store

from render.decode import DecodedImage, Window

DATA_DIR = os.path.join(os.path.dirname(data_store.__file__), "data")


def corpus_files() -> list[str]:
    return sorted(f for f in os.listdir(DATA_DIR) if f.endswith(".dcm"))


def corpus_path(name: str) -> str:
    return os.path.join(DATA_DIR, name)


def grey_image(pixels: np.ndarray, *, slope=1.0, intercept=0.0, window=None,
               photometric="MONOCHROME2", spacing=None, positions=None,
               orientations=None) -> DecodedImage:
    px = pixels if pixels.ndim == 3 else pixels[np.newaxis]
    n = px.shape[0]
    return DecodedImage(
        pixels=np.ascontiguousarray(px), photometric=photometric, is_color=False,
        slopes=np.full(n, float(slope)), intercepts=np.full(n, float(intercept)),
        windows=[window] * n, default_window=window or Window(128.0, 256.0),
        invert=photometric == "MONOCHROME1", pixel_spacing=spacing,
        positions=positions, orientations=orientations,
    )


def colour_image(pixels: np.ndarray) -> DecodedImage:
    px = pixels if pixels.ndim == 4 else pixels[np.newaxis]
    return DecodedImage(pixels=np.ascontiguousarray(px), photometric="RGB", is_color=True)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
