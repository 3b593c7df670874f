"""Bad parameters and broken files give the right RenderError subclass and status."""
from __future__ import annotations

import math

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian,
                         SecondaryCaptureImageStorage, generate_uid)

from render.decode import Window, load_image
from render.encode import encode_jpeg, encode_png
from render.errors import (BadRenderParameter, CorruptPixelData, FrameOutOfRange, RenderError,
                           UnsupportedImage)
from render.pipeline import MAX_OUTPUT_SIDE, render_frame

from .conftest import grey_image


@pytest.fixture
def img():
    return grey_image(np.zeros((2, 20, 30), np.int16), window=Window(0, 100))


@pytest.mark.parametrize("viewport", [
    (0, 100), (100, 0), (-5, 10), (math.nan, 10), (math.inf, 10), (MAX_OUTPUT_SIDE + 1, 10),
    (10, 10, 0, 0, 0, 5), (10, 10, -1, 0, 5, 5), (10, 10, 0, 0, math.nan, 5), (10,),
    "abc", (10.5, 10), (10, 10, 40, 0, 5, 5), ("x", 1), (True, 10),
])
def test_bad_viewport(img, viewport):
    with pytest.raises(BadRenderParameter) as exc:
        render_frame(img, 0, viewport=viewport)
    assert exc.value.status == 400 and str(exc.value)


@pytest.mark.parametrize("window", [(40,), (40, 0), (40, 0.5, "LINEAR"), (40, -3, "SIGMOID"),
                                    ("a", 10), (math.nan, 10), (40, 400, "GAMMA"), 5,
                                    (1, 2, 3, 4)])
def test_bad_window(img, window):
    with pytest.raises(BadRenderParameter):
        render_frame(img, 0, window=window)


@pytest.mark.parametrize("frame,exc", [(2, FrameOutOfRange), (-1, FrameOutOfRange),
                                       (1.5, BadRenderParameter), ("0", BadRenderParameter)])
def test_bad_frame(img, frame, exc):
    with pytest.raises(exc) as e:
        render_frame(img, frame)
    assert e.value.status == (404 if exc is FrameOutOfRange else 400)


@pytest.mark.parametrize("rotate", [45, "x", 91])
def test_bad_rotate(img, rotate):
    with pytest.raises(BadRenderParameter):
        render_frame(img, 0, rotate=rotate)


def test_window_string_and_tuple_forms(img):
    a = render_frame(img, 0, window="0,100,linear")
    b = render_frame(img, 0, window=(0, 100))
    assert np.array_equal(a, b)
    assert render_frame(img, 0, viewport="15,15").shape == (10, 15)


@pytest.mark.parametrize("q", [0, 101, -1, 50.5, "x", None, True])
def test_bad_quality(q):
    with pytest.raises(BadRenderParameter):
        encode_jpeg(np.zeros((4, 4), np.uint8), quality=q)


def test_encoders_roundtrip():
    import io

    import simplejpeg
    from PIL import Image
    grey = (np.arange(64 * 48) % 256).astype(np.uint8).reshape(48, 64)
    j = encode_jpeg(grey, 90)
    assert j[:2] == b"\xff\xd8" and simplejpeg.decode_jpeg(j, colorspace="GRAY").shape[:2] == (48, 64)
    rgb = np.dstack([grey, grey[::-1], grey[:, ::-1]])
    assert simplejpeg.decode_jpeg(encode_jpeg(rgb)).shape == (48, 64, 3)
    p = encode_png(rgb)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(p))), rgb)
    with pytest.raises(BadRenderParameter):
        encode_jpeg(np.zeros((4, 4), np.float32))


# ---------------------------------------------------------------- synthetic files


def _write(tmp_path, name, *, ts=ExplicitVRLittleEndian, pixels=None, photometric="MONOCHROME2",
           truncate=0, **extra):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    px = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) if pixels is None else pixels
    ds.Rows, ds.Columns = px.shape[-2], px.shape[-1]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    for k, v in extra.items():
        setattr(ds, k, v)
    data = px.astype("<u2").tobytes()
    ds.PixelData = data[: len(data) - truncate] if truncate else data
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path, px


def test_deflated_and_classic_attributes(tmp_path):
    path, px = _write(tmp_path, "d.dcm", ts=DeflatedExplicitVRLittleEndian,
                      PixelSpacing=[0.5, 0.5], RescaleSlope=2, RescaleIntercept=-10,
                      WindowCenter=100, WindowWidth=200, FrameTime=40)
    img = load_image(path)
    assert np.array_equal(img.pixels[0], px)
    assert img.rescale(0) == (2.0, -10.0) and img.window(0) == Window(100.0, 200.0)
    assert img.pixel_spacing == (0.5, 0.5) and img.fps == 25


def test_truncated_uncompressed_pixel_data(tmp_path):
    path, _ = _write(tmp_path, "t.dcm", truncate=60)
    with pytest.raises(CorruptPixelData) as e:
        load_image(path)
    assert e.value.status == 422


def test_missing_pixel_data(tmp_path):
    path, _ = _write(tmp_path, "m.dcm")
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(CorruptPixelData, match=r"Pixel Data \(7FE0,0010\) missing"):
        load_image(path)


def test_unsupported_photometric(tmp_path):
    path, _ = _write(tmp_path, "p.dcm", photometric="HSV")
    with pytest.raises(UnsupportedImage) as e:
        load_image(path)
    assert e.value.status == 415


def test_unsupported_transfer_syntax(tmp_path):
    path, _ = _write(tmp_path, "u.dcm")
    raw = path.read_bytes().replace(ExplicitVRLittleEndian.encode(), b"1.2.3.4.5.6.7.8\x00\x00\x00".ljust(len(ExplicitVRLittleEndian), b"\x00"))
    path.write_bytes(raw)
    with pytest.raises(RenderError) as e:
        load_image(path)
    assert isinstance(e.value, (UnsupportedImage, CorruptPixelData))


def test_not_dicom(tmp_path):
    p = tmp_path / "x.dcm"
    p.write_bytes(b"hello, this is not DICOM at all" * 10)
    with pytest.raises(RenderError):
        load_image(p)
