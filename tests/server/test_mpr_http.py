"""MPR planes, 3D MIP, tiles and image facts over HTTP on a generated CT series."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from adapters.importer import Importer
from tests.dicom_factory import ct_dataset, to_bytes

pytestmark = pytest.mark.db

STUDY, SERIES = "1.2.55.1", "1.2.55.2"
N, SIZE, DZ = 20, 32, 2.5      # 20 slices of 32x32 at 0.7 mm pixels, 2.5 mm apart


@pytest.fixture
def volume_series(catalog, tmp_path):
    for k in range(N):
        ds = ct_dataset(study_uid=STUDY, series_uid=SERIES, sop_uid=f"1.2.55.3.{k}",
                        size=SIZE, z=k * DZ)
        ds.InstanceNumber = k + 1
        arr = np.zeros((SIZE, SIZE), np.int16)            # -1024 HU
        arr[:, SIZE // 2:] = 1024 + 1000                  # bone on the right half
        if k >= N // 2:
            arr[:SIZE // 2, :] = 1024 + 40                # soft tissue, upper half, top slices
        ds.PixelData = arr.tobytes()
        (tmp_path / f"{k}.dcm").write_bytes(to_bytes(ds))
    s = Importer(catalog).run([tmp_path])
    assert s.imported == N


def img(body):
    return np.asarray(Image.open(io.BytesIO(body)))


def base(path=""):
    return f"/api/render/studies/{STUDY}/series/{SERIES}{path}"


def test_axial_coronal_sagittal_have_physical_aspect(live, volume_series):
    st, _, body = live.get(base("/mpr/axial?index=3&window=40,400"))
    assert st == 200 and img(body).shape == (SIZE, SIZE)
    st, _, body = live.get(base("/mpr/coronal?window=40,400&quality=95"))
    assert st == 200
    h, w = img(body).shape
    # 20 slices x 2.5 mm = 50 mm tall, 32 x 0.7 mm = 22.4 mm wide
    assert abs(h / w - (N * DZ) / (SIZE * 0.7)) < 0.1
    st, _, body = live.get(base("/mpr/sagittal?window=40,400"))
    assert st == 200


def test_geometry_and_volume_info(live, volume_series):
    st, g = live.json(base("/mpr/coronal/geometry?index=5"))
    assert st == 200 and g["plane"] == "coronal" and g["index"] == 5
    assert g["volume"]["shape"] == [N, SIZE, SIZE]
    assert abs(g["volume"]["spacing"][0] - DZ) < 1e-6
    st, v = live.json(base("/volume"))
    assert st == 200 and v["shape"] == [N, SIZE, SIZE]


def test_mip_rotates(live, volume_series):
    st, _, a = live.get(base("/mip?size=64&window=40,400"))
    st2, _, b = live.get(base("/mip?size=64&yaw=90&window=40,400"))
    assert st == st2 == 200
    assert img(a).shape == img(b).shape and not np.array_equal(img(a), img(b))


def test_volume_rendering_presets(live, volume_series):
    st, headers, body = live.get(base("/mip?size=64&mode=vr&preset=bone"))
    assert st == 200 and headers["Content-Type"] == "image/jpeg"
    bone = img(body).astype(int)
    assert bone.ndim == 3 and bone.shape[2] == 3          # colour
    h, w, _ = bone.shape
    # bone fills the right half of the volume (yaw 0: x to the right), the rest is clear
    right, left = bone[h // 3:2 * h // 3, w // 2 + 6:w // 2 + 12], bone[:, :w // 2 - 12]
    assert right.mean() > 150 and left.mean() < 10
    st, _, body = live.get(base("/mip?size=64&mode=vr&preset=soft"))
    assert st == 200 and np.abs(img(body).astype(int) - bone).mean() > 3
    st, _, same = live.get(base("/mip?size=64&mode=vr"))     # bone by default
    assert st == 200 and np.abs(img(same).astype(int) - bone).mean() < 1
    st, _, shifted = live.get(base("/mip?size=64&mode=vr&preset=bone&window=2000,700"))
    assert st == 200 and img(shifted).mean() < 2              # ramp above 1000 HU


def test_tiles_and_info(live, volume_series):
    inst = f"/series/{SERIES}/instances/1.2.55.3.0"
    st, info = live.json(f"/api/render/studies/{STUDY}{inst}/info?tile_size=64")
    assert st == 200 and info["rows"] == SIZE and info["pyramid"]["levels"][0]["tiles_x"] == 1
    st, _, body = live.get(f"/dicomweb/studies/{STUDY}{inst}/frames/1/tiles/0/0/0?tile_size=64")
    assert st == 200 and img(body).shape == (SIZE, SIZE)
    st, _, raw = live.get(f"/dicomweb/studies/{STUDY}{inst}/frames/1/tiles/0/5/5?tile_size=64")
    assert st == 404 and "outside" in json.loads(raw)["error"]


@pytest.mark.parametrize("path,status,needle", [
    ("/mpr/diagonal", 400, "plane"),
    ("/mpr/axial?index=999", 404, "index"),
    ("/mpr/axial?position=abc", 400, "position"),
    ("/mpr/axial?position=1,2", 400, "position"),
    ("/mpr/oblique?yaw=nan", 400, "yaw"),
    ("/mpr/axial?slab=-4", 400, "slab"),
    ("/mpr/axial?slab=5&mode=median", 400, "mode"),
    ("/mpr/axial?coarse=maybe", 400, "coarse"),
    ("/volume?coarse=2", 400, "coarse"),
    ("/mip?size=5", 400, "size"),
    ("/mip?mode=max", 400, "mode"),
    ("/mip?mode=vr&preset=kidney", 400, "preset"),
    ("/mip?mode=vr&preset=kidney", 400, "未知的容积再现预设"),
    ("/mip?mode=vr&preset=bone&window=40,0.5", 400, "width"),
])
def test_bad_mpr_requests(live, volume_series, path, status, needle):
    st, _, raw = live.get(base(path))
    assert st == status, raw
    assert needle in json.loads(raw)["error"]


def test_series_that_is_not_a_volume_is_422(live, catalog, tmp_path):
    for k, size in enumerate([32, 32, 48]):
        ds = ct_dataset(study_uid="1.2.56.1", series_uid="1.2.56.2", sop_uid=f"1.2.56.3.{k}",
                        size=size, z=k * 2.0)
        (tmp_path / f"{k}.dcm").write_bytes(to_bytes(ds))
    Importer(catalog).run([tmp_path])
    st, _, raw = live.get("/api/render/studies/1.2.56.1/series/1.2.56.2/mpr/coronal")
    assert st == 422 and "mixed image sizes" in json.loads(raw)["error"]


def test_coarse_planes_first_then_full(live, volume_series):
    """Progressive MPR (issue 18): coarse=1 before the full volume is built answers from
    every second slice averaged 2x2 (X-Quality: coarse, not cached); afterwards the full
    image, the same bytes as without coarse=1."""
    st, v = live.json(base("/volume?coarse=1"))
    assert st == 200 and v["quality"] == "coarse"
    assert v["shape"] == [N // 2 + 1, SIZE // 2, SIZE // 2]        # 0,2,..,18 and 19
    assert abs(v["spacing"][1] - 1.4) < 1e-6
    q = "/mpr/coronal?window=40,400&quality=95&viewport=64,64"
    st, h, body = live.get(base(q + "&coarse=1"))
    assert st == 200 and h["X-Quality"] == "coarse" and "no-store" in h["Cache-Control"]
    coarse = img(body).astype(int)
    st, h, body = live.get(base(q))
    assert st == 200 and h["X-Quality"] == "full"
    full = img(body).astype(int)
    # the same physical size within a slice (11 coarse slices 5 mm apart span 55 mm, the
    # 20 slices 50 mm: the 64-px viewport's height is shared, the width is not)
    assert coarse.shape[0] == full.shape[0] and abs(coarse.shape[1] / full.shape[1] - 1) < 0.12
    for im in (coarse, full):
        h_, w_ = im.shape
        # the centre row: soft tissue (grey) across the top slices (shown on top), below
        # them air left (black) and bone right (white)
        low = im[h_ * 5 // 8:]
        assert low[:, w_ // 2 + 3:].min() > 240 and low[:, :w_ // 2 - 3].max() < 15
        assert abs(im[:h_ * 3 // 8].mean() - 128) < 15
    st, h, again = live.get(base(q + "&coarse=1"))       # built now: the full image
    assert st == 200 and h["X-Quality"] == "full" and again == body
    st, v = live.json(base("/volume?coarse=1"))
    assert st == 200 and v["quality"] == "full" and v["shape"] == [N, SIZE, SIZE]


def test_coarse_waits_like_full_while_another_series_coarse_is_built(live, volume_series):
    """coarse=1 is a light render only for one coarse build at a time per process: while
    another series' coarse volume is being built, it is answered like a full request."""
    renders = live.ctx.renders
    building = renders._coarse_building()
    building.add(("coarse", "another series"))
    try:
        st, h, body = live.get(base("/mpr/axial?coarse=1&window=40,400"))
        assert st == 200 and h["X-Quality"] == "full"
        assert img(body).shape == (SIZE, SIZE)
        st, v = live.json(base("/volume?coarse=1"))
        assert st == 200 and v["quality"] == "full"
    finally:
        building.discard(("coarse", "another series"))
