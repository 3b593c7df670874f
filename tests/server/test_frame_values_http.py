"""The raw pixel values of one frame (the workspace's CT value at the pointer and its region
statistics): stored values + rescale, the same access as the rendered frame, 4xx on bad input."""
import numpy as np
import pytest

from adapters.importer import Importer
from tests.dicom_factory import ct_dataset, to_bytes

pytestmark = pytest.mark.db

STUDY, SERIES = "1.2.826.0.1.3680043.10.1373.9.11", "1.2.826.0.1.3680043.10.1373.9.12"
SOP = "1.2.826.0.1.3680043.10.1373.9.13.1"
SOP_MR = "1.2.826.0.1.3680043.10.1373.9.13.2"
SOP_RGB = "1.2.826.0.1.3680043.10.1373.9.13.3"


def url(sop=SOP, n=1):
    return f"/api/render/studies/{STUDY}/series/{SERIES}/instances/{sop}/frames/{n}/values"


@pytest.fixture
def images(catalog, tmp_path):
    rng = np.random.default_rng(3)
    ct = rng.integers(0, 3000, (48, 40)).astype(np.int16)
    ds = ct_dataset(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP, size=48)
    ds.Columns = 40
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.PixelData = ct.tobytes()
    (tmp_path / "ct.dcm").write_bytes(to_bytes(ds))
    mr = np.full((16, 16), 40000, np.uint16)          # does not fit int16: float32
    mr[3, 5] = 7
    ds = ct_dataset(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP_MR, size=16, modality="MR", z=1.0)
    ds.PixelRepresentation = 0
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.PixelData = mr.tobytes()
    (tmp_path / "mr.dcm").write_bytes(to_bytes(ds))
    ds = ct_dataset(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP_RGB, size=8, z=2.0)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.full((8, 8, 3), 200, np.uint8).tobytes()
    (tmp_path / "rgb.dcm").write_bytes(to_bytes(ds))
    Importer(catalog).run([tmp_path])
    return ct, mr


def test_ct_values_and_rescale(live, images):
    ct, _ = images
    status, hdrs, body = live.get(url())
    assert status == 200, body[:200]
    assert hdrs["Content-Type"] == "application/octet-stream"
    assert hdrs["X-Value-Type"] == "int16"
    assert (int(hdrs["X-Rows"]), int(hdrs["X-Columns"])) == (48, 40)
    assert float(hdrs["X-Rescale-Slope"]) == 2.0 and float(hdrs["X-Rescale-Intercept"]) == -1000.0
    assert hdrs["X-Modality"] == "CT"
    got = np.frombuffer(body, "<i2").reshape(48, 40)
    assert np.array_equal(got, ct)
    # HU at row 7, column 31 as the viewer computes it
    assert got[7, 31] * 2 - 1000 == int(ct[7, 31]) * 2 - 1000
    # ETag: a second read is a 304
    status, _, body = live.get(url(), headers={"If-None-Match": hdrs["ETag"]})
    assert status == 304 and body == b""


def test_values_beyond_int16_come_as_float32(live, images):
    _, mr = images
    status, hdrs, body = live.get(url(SOP_MR))
    assert status == 200 and hdrs["X-Value-Type"] == "float32"
    got = np.frombuffer(body, "<f4").reshape(16, 16)
    assert got[0, 0] == 40000.0 and got[3, 5] == 7.0 and hdrs["X-Modality"] == "MR"


def test_refusals(live, images):
    assert live.get(url(), auth=False)[0] == 401
    status, _, body = live.get(url(n=2))
    assert status == 404 and b"frame 2" in body
    status, _, body = live.get(url(SOP_RGB))
    assert status == 400 and "彩色".encode() in body
    assert live.get(url(sop="1.2.3.4.5"))[0] == 404
    assert live.get(url(n=0))[0] == 400
    assert live.get(url().replace(STUDY, "x.y"))[0] in (400, 404)
