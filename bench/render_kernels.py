"""Micro-benchmark of render/ kernels (prints medians in ms). Not a test.

    .venv/bin/python bench/render_kernels.py
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data_store  # noqa: E402

from render.decode import DecodedImage, Window, load_image  # noqa: E402
from render.encode import encode_jpeg  # noqa: E402
from render.pipeline import render_frame  # noqa: E402
from render.volume import build_volume, mip_projection, mpr_plane  # noqa: E402

D = os.path.join(os.path.dirname(data_store.__file__), "data")


def med(f, n=30):
    f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def main():
    ct = load_image(os.path.join(D, "693_UNCR.dcm"))
    print(f"decode J2K 512x512      {med(lambda: load_image(os.path.join(D, '693_J2KR.dcm')), 10):7.2f} ms")
    print(f"render CT native        {med(lambda: render_frame(ct, 0, window=(40, 400))):7.3f} ms")
    print(f"render CT 360 px        {med(lambda: render_frame(ct, 0, window=(40, 400), viewport=(360, 360))):7.3f} ms")
    a = render_frame(ct, 0, window=(40, 400))
    print(f"JPEG q85 512x512        {med(lambda: encode_jpeg(a, 85)):7.3f} ms")
    b = render_frame(ct, 0, window=(40, 400), viewport=(360, 360))
    print(f"JPEG q85 360x360        {med(lambda: encode_jpeg(b, 85)):7.3f} ms")
    rg = load_image(os.path.join(D, "RG1_UNCR.dcm"))
    print(f"render CR 1955x1841->360 {med(lambda: render_frame(rg, 0, viewport=(360, 360))):7.3f} ms")
    # 300 x 512 x 512 volume from the CT slice, shifted per slice so planes are not flat
    base = ct.pixels[0]
    imgs = [DecodedImage(pixels=np.roll(base, k, axis=0)[np.newaxis].copy(), photometric="MONOCHROME2",
                         is_color=False, slopes=np.array([1.0]), intercepts=np.array([-1024.0]),
                         windows=[Window(40, 400)], pixel_spacing=(0.7, 0.7),
                         positions=np.array([[0, 0, k * 1.0]]),
                         orientations=np.array([[1.0, 0, 0, 0, 1, 0]])) for k in range(300)]
    print(f"build_volume 300x512x512 {med(lambda: build_volume(imgs), 5):7.1f} ms")
    vol = build_volume(imgs)
    t = time.perf_counter()
    vol.sagittal_data
    print(f"sagittal copy (once)    {(time.perf_counter() - t) * 1e3:7.1f} ms")
    for plane in ("axial", "coronal", "sagittal", "oblique"):
        print(f"MPR {plane:8s}+JPEG native {med(lambda: encode_jpeg(mpr_plane(vol, plane, window=(40, 400)))):7.2f} ms"
              f"   360px {med(lambda: encode_jpeg(mpr_plane(vol, plane, window=(40, 400), viewport=(360, 360)))):7.2f} ms")
    print(f"oblique yaw30 pitch20   {med(lambda: mpr_plane(vol, 'oblique', window=(40, 400), yaw=30, pitch=20)):7.2f} ms")
    print(f"coronal slab MIP 10 mm  {med(lambda: mpr_plane(vol, 'coronal', window=(40, 400), slab_mm=10)):7.2f} ms")
    mip_projection(vol, 30, 10, 256)
    print(f"MIP 256 preview         {med(lambda: mip_projection(vol, 30, 10, 256), 5):7.1f} ms")
    print(f"MIP 512 full            {med(lambda: mip_projection(vol, 30, 10, 512), 3):7.1f} ms")


if __name__ == "__main__":
    main()
