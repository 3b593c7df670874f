"""Pyramid tiles for large images (radiographs, pathology): a phone zoomed in loads only what
it shows. Level 0 is full resolution; each level halves width and height (area-averaged by
the same fused kernel as :func:`render.pipeline.render_frame`)."""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from .decode import DecodedImage
from .errors import BadRenderParameter, TileOutOfRange
from .pipeline import check_frame, display_window, grey_display_reference, render_region, _uses_lut_path

log = logging.getLogger(__name__)

DEFAULT_TILE_SIZE = 256
MIN_TILE_SIZE = 16
MAX_TILE_SIZE = 1024


def _check_tile_size(tile_size: Any) -> int:
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)):
        raise BadRenderParameter(f"tile_size must be an integer, got {tile_size!r}")
    if not MIN_TILE_SIZE <= tile_size <= MAX_TILE_SIZE:
        raise BadRenderParameter(f"tile_size must be {MIN_TILE_SIZE}..{MAX_TILE_SIZE}, got {tile_size}")
    return int(tile_size)


def pyramid_info(img: DecodedImage, tile_size: int = DEFAULT_TILE_SIZE) -> dict[str, Any]:
    """Levels (0 = full size) down to the first that fits in one tile."""
    ts = _check_tile_size(tile_size)
    w, h = img.cols, img.rows
    levels = []
    lv = 0
    while True:
        lw, lh = math.ceil(w / 2**lv), math.ceil(h / 2**lv)
        levels.append({"level": lv, "width": lw, "height": lh,
                       "tiles_x": math.ceil(lw / ts), "tiles_y": math.ceil(lh / ts)})
        if lw <= ts and lh <= ts:
            break
        lv += 1
    return {"width": w, "height": h, "tile_size": ts, "levels": levels, "frames": img.frames}


def tile(img: DecodedImage, frame: int, level: int, tx: int, ty: int,
         tile_size: int = DEFAULT_TILE_SIZE, *, window: Any = None, invert: bool = False) -> np.ndarray:
    """One uint8 tile (edge tiles are smaller than tile_size)."""
    frame = check_frame(img, frame)
    info = pyramid_info(img, tile_size)
    ts = info["tile_size"]
    for name, v in (("level", level), ("tx", tx), ("ty", ty)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise BadRenderParameter(f"{name} must be an integer, got {v!r}")
    if not 0 <= level < len(info["levels"]):
        raise TileOutOfRange(f"level {level} does not exist (0..{len(info['levels']) - 1})")
    lv = info["levels"][level]
    if not (0 <= tx < lv["tiles_x"] and 0 <= ty < lv["tiles_y"]):
        raise TileOutOfRange(
            f"tile ({tx},{ty}) is outside level {level}, which has {lv['tiles_x']}x{lv['tiles_y']} tiles")
    f = 2**level
    ox, oy = tx * ts, ty * ts
    ow, oh = min(ts, lv["width"] - ox), min(ts, lv["height"] - oy)
    sx, sy = ox * f, oy * f
    sw, sh = min(ow * f, img.cols - sx), min(oh * f, img.rows - sy)
    region = (float(sx), float(sy), float(sw), float(sh))
    src = img.pixels[frame]
    if img.is_color:
        return render_region(src, region, ow, oh, invert=bool(invert))
    win = display_window(img, frame, window)
    inv = bool(invert) != bool(img.invert)
    if _uses_lut_path(img, win):
        disp = grey_display_reference(img, frame, window)
        return render_region(disp, region, ow, oh, window=None, invert=inv)
    slope, intercept = img.rescale(frame)
    return render_region(src, region, ow, oh, slope=slope, intercept=intercept, window=win,
                         invert=inv)
