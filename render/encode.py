"""Encode rendered uint8 arrays: JPEG (simplejpeg / libjpeg-turbo) and PNG (Pillow, lossless)."""
from __future__ import annotations

import io
import logging

import numpy as np

from .errors import BadRenderParameter

log = logging.getLogger(__name__)


def _check_array(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise BadRenderParameter(f"can only encode uint8 images, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise BadRenderParameter(f"can only encode (H, W) or (H, W, 3) images, got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadRenderParameter("cannot encode an empty image")
    return np.ascontiguousarray(arr)


def check_quality(quality) -> int:
    if isinstance(quality, bool):
        raise BadRenderParameter(f"quality must be an integer 1-100, got {quality!r}")
    try:
        q = float(quality)
    except (TypeError, ValueError):
        raise BadRenderParameter(f"quality must be an integer 1-100, got {quality!r}") from None
    if not (q == q and q == int(q) and 1 <= q <= 100):
        raise BadRenderParameter(f"quality must be an integer 1-100, got {quality!r}")
    return int(q)


def encode_jpeg(arr: np.ndarray, quality: int = 85) -> bytes:
    """Baseline JPEG of a grey (colorspace GRAY) or RGB uint8 image."""
    import simplejpeg

    q = check_quality(quality)
    a = _check_array(arr)
    if a.ndim == 2:
        return simplejpeg.encode_jpeg(a[:, :, np.newaxis], quality=q, colorspace="GRAY",
                                      colorsubsampling="Gray")
    return simplejpeg.encode_jpeg(a, quality=q, colorspace="RGB", colorsubsampling="420")


def encode_png(arr: np.ndarray, *, compress_level: int = 1) -> bytes:
    """Lossless PNG (fast compression by default)."""
    from PIL import Image

    a = _check_array(arr)
    buf = io.BytesIO()
    Image.fromarray(a, mode="L" if a.ndim == 2 else "RGB").save(
        buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
