"""Every image of pydicom-data's corpus, rendered at native size, against pydicom's own
pipeline (apply_modality_lut + apply_voi_lut / apply_color_lut / convert_color_space), scaled
the Standard's way to 0..255, within one grey level; and fixed-coordinate checks shared by
the different encodings of one image."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.pixels import (apply_color_lut, apply_modality_lut, apply_voi_lut,
                            convert_color_space, pixel_array)
from pydicom.uid import ImplicitVRLittleEndian, JPEGBaseline8Bit

from render.decode import load_image
from render.errors import CorruptPixelData, RenderError
from render.pipeline import render_frame

from .conftest import corpus_files, corpus_path

# Files broken on purpose, with the error we must raise instead of an unhandled exception.
BROKEN = {
    "emri_small_jpeg_2k_lossless_too_short.dcm": CorruptPixelData,  # no Pixel Data survives
}

# pydicom 3.0.2 bug: big endian OW palette data is read as little endian, so its own colours
# for these files are wrong; their reference is their little endian twin (same image).
PYDICOM_WRONG = {
    "OBXXXX1A_expb.dcm": "OBXXXX1A.dcm",
    "OBXXXX1A_expb_2frame.dcm": "OBXXXX1A_2frame.dcm",
}


# Per-frame functional groups -> the classic top-level attributes pydicom's functions read.
def _flatten_frame(ds, frame):
    ds = ds.copy()
    for seq, keys in (("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept")),
                      ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction"))):
        for src in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
            groups = ds.get(src)
            if not groups:
                continue
            item = groups[frame if src.startswith("Per") else 0]
            if seq in item:
                for k in keys:
                    if k in item[seq][0]:
                        setattr(ds, k, item[seq][0][k].value)
                break
    return ds


def _window_range(ds) -> tuple[float, float]:
    """pydicom's output range for windowing (probe with extreme inputs)."""
    with np.errstate(all="ignore"):
        lo, hi = apply_voi_lut(np.array([-1e15, 1e15]), ds, prefer_lut=False)
    return float(lo), float(hi)


def reference_frames(name: str):
    name = PYDICOM_WRONG.get(name, name)
    ds = pydicom.dcmread(corpus_path(name), force=True)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    pi = ds.PhotometricInterpretation
    nframes = int(ds.get("NumberOfFrames") or 1)
    check = sorted({0, nframes - 1})
    if pi == "PALETTE COLOR":
        arr = ds.pixel_array
        rgb = apply_color_lut(arr, ds)
        if rgb.dtype != np.uint8:
            rgb = (rgb >> 8).astype(np.uint8)
        rgb = rgb if nframes > 1 else rgb[np.newaxis]
        return {f: rgb[f] for f in check}
    if ds.SamplesPerPixel == 3:
        if pi in ("YBR_FULL", "YBR_FULL_422") and not ds.file_meta.TransferSyntaxUID.is_compressed:
            raw = pixel_array(ds, raw=True)
            arr = convert_color_space(raw, pi, "RGB")
        elif ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit:
            # Lossy JPEG: pydicom's two plugins differ from each other by up to 5 levels
            # (chroma upsampling/IDCT); render/ decodes with libjpeg-turbo, like the Pillow one.
            arr = pixel_array(ds, decoding_plugin="pillow")
        else:
            arr = ds.pixel_array
        arr = arr if nframes > 1 else arr[np.newaxis]
        if arr.dtype != np.uint8:
            arr = np.rint(arr.astype(np.float64) * 255 / (2 ** ds.BitsStored - 1)).astype(np.uint8)
        return {f: arr[f] for f in check}
    arr = ds.pixel_array
    arr = arr if nframes > 1 else arr[np.newaxis]
    out = {}
    if "WindowCenter" not in ds and "VOILUTSequence" not in ds and not _flatten_frame(ds, 0).get("WindowCenter"):
        # no VOI in the file: window the whole modality range (the default of render/)
        mods = [apply_modality_lut(arr[f], _flatten_frame(ds, f)) for f in range(nframes)]
        lo = min(float(np.min(m)) for m in mods)
        hi = max(float(np.max(m)) for m in mods)
        ds.WindowCenter, ds.WindowWidth = (lo + hi) / 2 + 0.5, max(hi - lo + 1, 1)
    for f in check:
        fds = _flatten_frame(ds, f)
        mod = apply_modality_lut(arr[f], fds)
        if "VOILUTSequence" in fds:
            item = fds.VOILUTSequence[0]
            disp = apply_voi_lut(mod, fds).astype(np.float64) * 255 / (2 ** item.LUTDescriptor[2] - 1)
        else:
            y0, y1 = _window_range(fds)
            disp = (apply_voi_lut(mod, fds, prefer_lut=False) - y0) / (y1 - y0) * 255
        u8 = np.clip(np.floor(disp + 0.5), 0, 255).astype(np.uint8)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            u8 = 255 - u8
        out[f] = u8
    return out


_IMAGES: dict[str, object] = {}


def _load(name):
    if name not in _IMAGES:
        _IMAGES[name] = load_image(corpus_path(name))
    return _IMAGES[name]


GOOD = [f for f in corpus_files() if f not in BROKEN]


def test_broken_list_is_current():
    missing = set(BROKEN) - set(corpus_files())
    assert not missing, f"files listed as broken are not in the corpus: {missing}"


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_raise_the_right_error(name):
    with pytest.raises(BROKEN[name]) as exc:
        load_image(corpus_path(name))
    assert isinstance(exc.value, RenderError)
    assert exc.value.status in (415, 422)


@pytest.mark.parametrize("name", GOOD)
def test_native_render_matches_pydicom(name):
    img = _load(name)
    ref = reference_frames(name)
    for f, expected in ref.items():
        got = render_frame(img, f)
        assert got.shape == expected.shape, (name, f)
        diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
        assert diff.max() <= 1, (name, f, int(diff.max()), float((diff > 0).mean()))


# -------------------------------------------------------------- shared fixed coordinates

FAMILIES_LOSSLESS = [
    ["693_UNCR.dcm", "693_J2KR.dcm"],
    ["MR2_UNCR.dcm", "MR2_J2KR.dcm"],
    ["RG1_UNCR.dcm", "RG1_J2KR.dcm"],
    ["RG3_UNCR.dcm", "RG3_J2KR.dcm"],
    ["US1_UNCR.dcm", "US1_J2KR.dcm"],
    ["OBXXXX1A.dcm", "OBXXXX1A_expb.dcm", "OBXXXX1A_rle.dcm"],
    ["OBXXXX1A_2frame.dcm", "OBXXXX1A_expb_2frame.dcm", "OBXXXX1A_rle_2frame.dcm"],
    ["SC_rgb.dcm", "SC_rgb_expb.dcm", "SC_rgb_16bit.dcm", "SC_rgb_expb_16bit.dcm",
     "SC_rgb_32bit.dcm", "SC_rgb_expb_32bit.dcm", "SC_rgb_dcmtk_ebcr_dcmd.dcm",
     "SC_rgb_gdcm2k_uncompressed.dcm"],
    ["SC_rgb_2frame.dcm", "SC_rgb_expb_2frame.dcm", "SC_rgb_16bit_2frame.dcm",
     "SC_rgb_expb_16bit_2frame.dcm", "SC_rgb_32bit_2frame.dcm", "SC_rgb_expb_32bit_2frame.dcm"],
    ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_big_endian.dcm",
     "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"],
    ["liver.dcm", "liver_expb.dcm"],
    ["gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm"],
]
FAMILIES_LOSSY = [
    ["MR2_UNCI.dcm", "MR2_J2KI.dcm"],
    ["RG1_UNCI.dcm", "RG1_J2KI.dcm"],
    ["RG3_UNCI.dcm", "RG3_J2KI.dcm"],
    ["US1_UNCI.dcm", "US1_J2KI.dcm"],
    ["693_UNCI.dcm", "693_J2KR.dcm"],
]


def _coords(img, n=7):
    rr = np.linspace(0, img.rows - 1, n).astype(int)
    cc = np.linspace(0, img.cols - 1, n).astype(int)
    return rr, cc


@pytest.mark.parametrize("family", FAMILIES_LOSSLESS, ids=lambda f: f[0])
def test_lossless_encodings_agree_exactly(family):
    first = _load(family[0])
    rr, cc = _coords(first)
    for f in range(first.frames):
        want = render_frame(first, f)
        for other in family[1:]:
            img = _load(other)
            got = render_frame(img, f)
            assert np.array_equal(got[rr][:, cc], want[rr][:, cc]), (family[0], other, f)
            # stored values too, where both are grey
            if not img.is_color and not first.is_color:
                assert np.array_equal(img.pixels[f], first.pixels[f]), other


@pytest.mark.parametrize("family", FAMILIES_LOSSY, ids=lambda f: f[0])
def test_lossy_encodings_agree_closely(family):
    a, b = _load(family[0]), _load(family[1])
    rr, cc = _coords(a, 15)
    x = render_frame(a, 0, window=None).astype(int)[rr][:, cc]
    y = render_frame(b, 0, window=a.window(0)).astype(int)[rr][:, cc]
    assert np.median(np.abs(x - y)) <= 2


def test_known_values_at_fixed_coordinates():
    # hand-checked stored values (pydicom's test suite uses the same images)
    ct = _load("693_UNCR.dcm")
    assert ct.pixels.dtype == np.int16 and ct.rescale(0) == (1.0, -1024.0)
    mr = _load("emri_small.dcm")
    assert mr.frames == 10 and mr.pixels.shape == (10, 64, 64)
    rgb = _load("SC_rgb.dcm")
    # SC_rgb: red band on top, then green, blue ... (pydicom test_numpy_pixel_data)
    assert tuple(rgb.pixels[0, 5, 50]) == (255, 0, 0)
    assert tuple(rgb.pixels[0, 15, 50]) == (255, 128, 128)
    assert tuple(rgb.pixels[0, 25, 50]) == (0, 255, 0)
    assert tuple(rgb.pixels[0, 45, 50]) == (0, 0, 255)
    assert tuple(rgb.pixels[0, 65, 50]) == (0, 0, 0)
    assert tuple(rgb.pixels[0, 75, 50]) == (64, 64, 64)
    assert tuple(rgb.pixels[0, 95, 50]) == (255, 255, 255)


def test_metadata():
    us = _load("color3d_jpeg_baseline.dcm")
    assert us.frames == 120 and us.is_color and us.fps and us.fps > 0
    ct = _load("693_UNCR.dcm")
    assert ct.pixel_spacing and ct.positions.shape == (1, 3) and ct.orientations.shape == (1, 6)
    ect = _load("eCT_Supplemental.dcm")
    assert ect.frames == 2 and ect.window(1) is not None and ect.rescale(1)[1] == -1024.0
    rg = _load("RG1_UNCR.dcm")
    assert rg.invert and rg.photometric == "MONOCHROME1"
    assert _load("mlut_18.dcm").modality_lut is not None
    assert _load("vlut_04.dcm").voi_lut is not None
    assert ct.nbytes >= ct.pixels.nbytes
