"""Decode a DICOM file once into stored pixel values plus the attributes needed to display it.

``load_image(path)`` reads the file with pydicom, decodes every frame with the fastest
installed plugin and returns a :class:`DecodedImage`. Grey images keep their *stored* values
(the modality LUT and VOI are applied later, per request, by :mod:`render.pipeline`); colour
images are converted to 8-bit RGB once, here.

Problems become :mod:`render.errors` exceptions, never a bare pydicom/numpy error:
no Pixel Data or truncated/undecodable data -> ``CorruptPixelData`` (422), a transfer
syntax or photometric interpretation we cannot show -> ``UnsupportedImage`` (415).
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from .errors import CorruptPixelData, RenderError, UnsupportedImage

log = logging.getLogger(__name__)


class ImageTooLarge(RenderError):
    """The header declares more decoded pixel bytes than max_decoded_mb allows (a
    decompression bomb, or an image far beyond any real one): refused before decoding."""

    status = 422


# Decoded-size limits, in bytes: the whole instance (rows x columns x frames x samples x
# bytes per sample; setting max_decoded_mb) and one frame (max_frame_mb). The render
# service sets them from the settings at start-up; decode workers get them from their
# initializer. 1 GiB per instance passes every real multi-frame image we know (the largest
# in pydicom-data decodes to 105 MiB, a 300-frame 1024x1024 XA run to 300 MiB); 192 MiB per
# frame passes an 8192x8192 RGB frame, while a 16384x16384 bomb frame (256 MiB) is refused.
DEFAULT_MAX_DECODED_BYTES = 1024 << 20
DEFAULT_MAX_FRAME_BYTES = 192 << 20
limits = {"max_decoded_bytes": DEFAULT_MAX_DECODED_BYTES,
          "max_frame_bytes": DEFAULT_MAX_FRAME_BYTES}


def set_max_decoded_mb(mb: int, frame_mb: int | None = None) -> None:
    limits["max_decoded_bytes"] = int(mb) << 20
    if frame_mb is not None:
        limits["max_frame_bytes"] = int(frame_mb) << 20


def _header_int(ds: Dataset, keyword: str, default: int) -> int:
    try:
        v = ds.get(keyword)
        return int(v) if v not in (None, "") else default
    except (TypeError, ValueError):
        return default


def decoded_size(ds: Dataset) -> int:
    """Bytes the decoded pixel array will take, from the header alone (no pixel data read):
    rows x columns x frames x samples x bytes per sample (1-bit images decode to bytes)."""
    rows = max(_header_int(ds, "Rows", 0), 0)
    cols = max(_header_int(ds, "Columns", 0), 0)
    frames = max(_header_int(ds, "NumberOfFrames", 1), 1)
    spp = max(_header_int(ds, "SamplesPerPixel", 1), 1)
    bits = max(_header_int(ds, "BitsAllocated", 8), 1)
    return rows * cols * frames * spp * max((bits + 7) // 8, 1)


def codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) a JPEG, JPEG-LS or JPEG 2000 frame declares in its own header (SOF /
    SIZ marker), or None when it cannot be told (RLE decodes to the DICOM header's size)."""
    import struct
    if frame[:4] == b"\xff\x4f\xff\x51" and len(frame) >= 24:       # J2K SOC + SIZ
        xs, ys, xo, yo = struct.unpack(">IIII", frame[8:24])
        return max(ys - yo, 0), max(xs - xo, 0)
    if frame[:2] == b"\xff\xd8":
        from pydicom.pixels.utils import _get_jpg_parameters
        try:
            p = _get_jpg_parameters(frame[:65536])
        except Exception:  # noqa: BLE001 - an unreadable header: the decoder will say so
            return None
        if "height" in p and "width" in p:
            return int(p["height"]), int(p["width"])
    return None


def check_codestream(ds: Dataset) -> None:
    """Raise ImageTooLarge when the first compressed frame's own header declares more pixels
    than Rows x Columns: a decoder sizes its output from the codestream, so a small DICOM
    header in front of a huge codestream would get past check_decoded_size."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        if ts is None or not UID(ts).is_encapsulated or "PixelData" not in ds:
            return
    except ValueError:          # not a transfer syntax we know: the decoder refuses it
        return
    import itertools

    from pydicom.encaps import generate_fragments
    try:      # the Basic Offset Table item, then the first frame's first fragment
        items = list(itertools.islice(generate_fragments(ds.PixelData), 2))
    except Exception:  # noqa: BLE001 - malformed fragments are refused elsewhere
        return
    first = next((f for f in items if f[:1] == b"\xff"), b"")
    size = codestream_size(bytes(first[:65536]))
    rows, cols = _header_int(ds, "Rows", 0), _header_int(ds, "Columns", 0)
    if size is not None and size[0] * size[1] > rows * cols:
        raise ImageTooLarge(
            f"压缩数据声明的尺寸（{size[0]}x{size[1]}）大于文件头（{rows}x{cols}），已拒绝 / "
            f"the compressed frame declares {size[0]}x{size[1]} pixels, more than the "
            f"header's Rows x Columns ({rows}x{cols}); refused without decoding")


def check_decoded_size(ds: Dataset, max_bytes: int | None = None) -> None:
    """Raise ImageTooLarge when the header declares more decoded bytes than the limit
    (``max_bytes``, else the process-wide max_decoded_mb; one frame: max_frame_mb), or the
    first compressed frame declares more pixels than the header (check_codestream). Call
    it before decoding."""
    check_codestream(ds)
    limit = limits["max_decoded_bytes"] if max_bytes is None else max_bytes
    frame_limit = limits["max_frame_bytes"]
    size = decoded_size(ds)
    frames = max(_header_int(ds, "NumberOfFrames", 1), 1)
    for what, value, cap, name in (("the image", size, limit, "max_decoded_mb"),
                                   ("one frame", size // frames, frame_limit, "max_frame_mb")):
        if cap and value > cap:
            raise ImageTooLarge(
                f"图像解码后过大（{value >> 20} MiB，上限 {cap >> 20} MiB，{name}），已拒绝 / "
                f"{what} would decode to {value >> 20} MiB "
                f"({_header_int(ds, 'Rows', 0)}x{_header_int(ds, 'Columns', 0)}, "
                f"{frames} frame(s)), over the limit of {cap >> 20} MiB ({name}); "
                "refused without decoding")


WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
COLOUR_PHOTOMETRICS = (
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_PARTIAL_420",
    "YBR_ICT",
    "YBR_RCT",
    "PALETTE COLOR",
)

# Which pydicom decoding plugin to prefer per transfer syntax (measured with bench/render_bench.py):
# pyjpegls is 3x faster than pylibjpeg for JPEG-LS, pylibjpeg-rle 8x faster than pydicom's RLE,
# openjpeg (pylibjpeg) handles every J2K bit depth, Pillow does not.
_PREFERRED_PLUGIN = {
    JPEGLSLossless: "pyjpegls",
    JPEGLSNearLossless: "pyjpegls",
    RLELossless: "pylibjpeg",
    JPEG2000: "pylibjpeg",
    JPEG2000Lossless: "pylibjpeg",
}


@dataclass(frozen=True)
class Window:
    """A VOI window: centre and width in modality (e.g. HU) units, and its function."""

    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True, eq=False)
class LUT:
    """A modality or VOI lookup table (PS3.3 C.11.1 / C.11.2).

    Input values below ``first_mapped`` map to the first entry, values past the end to the
    last entry. ``bits`` is the LUT Descriptor's bits-per-entry (output range 0..2**bits-1).
    """

    first_mapped: int
    data: np.ndarray
    bits: int

    def apply(self, arr: np.ndarray) -> np.ndarray:
        idx = np.asarray(arr).astype(np.int64) - self.first_mapped
        np.clip(idx, 0, len(self.data) - 1, out=idx)
        return self.data[idx]

    @property
    def out_max(self) -> int:
        return (1 << self.bits) - 1


@dataclass(eq=False)
class DecodedImage:
    """All frames of one DICOM instance, decoded once, plus display attributes.

    ``pixels`` is (frames, rows, cols) of stored values (native dtype) for grey images or
    (frames, rows, cols, 3) uint8 RGB for colour. Per-frame arrays have one row per frame.
    """

    pixels: np.ndarray
    photometric: str
    is_color: bool
    bits_stored: int = 8
    signed: bool = False
    # modality LUT: either slope/intercept per frame or a LUT (which then takes precedence)
    slopes: np.ndarray = field(default_factory=lambda: np.ones(1))
    intercepts: np.ndarray = field(default_factory=lambda: np.zeros(1))
    modality_lut: LUT | None = None
    # VOI: file window per frame (None where the file has none), VOI LUT, fallback window
    windows: list[Window | None] = field(default_factory=list)
    voi_lut: LUT | None = None
    default_window: Window = Window(128.0, 256.0)
    invert: bool = False
    pixel_spacing: tuple[float, float] | None = None  # (row spacing, column spacing) in mm
    spacing_source: str | None = None  # "PixelSpacing" | "ImagerPixelSpacing" | None
    slice_thickness: float | None = None
    positions: np.ndarray | None = None  # (frames, 3) ImagePositionPatient
    orientations: np.ndarray | None = None  # (frames, 6) ImageOrientationPatient
    frame_time_ms: float | None = None
    cine_rate: float | None = None
    recommended_fps: float | None = None
    modality: str | None = None
    sop_instance_uid: str | None = None
    series_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    transfer_syntax: str | None = None

    @property
    def frames(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def cols(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def nbytes(self) -> int:
        extra = 0
        for lut in (self.modality_lut, self.voi_lut):
            if lut is not None:
                extra += lut.data.nbytes
        return int(self.pixels.nbytes) + extra + 1024

    @property
    def fps(self) -> float | None:
        """Playback rate for cine: RecommendedDisplayFrameRate, CineRate, then 1000/FrameTime."""
        if self.recommended_fps:
            return self.recommended_fps
        if self.cine_rate:
            return self.cine_rate
        if self.frame_time_ms:
            return 1000.0 / self.frame_time_ms
        return None

    def window(self, frame: int = 0) -> Window | None:
        """The file's own window for ``frame`` (None if it has none)."""
        if not self.windows:
            return None
        return self.windows[min(frame, len(self.windows) - 1)]

    def rescale(self, frame: int = 0) -> tuple[float, float]:
        i = min(frame, len(self.slopes) - 1)
        return float(self.slopes[i]), float(self.intercepts[i])


# --------------------------------------------------------------------------- reading


def _read(path: str | os.PathLike) -> Dataset:
    try:
        # (no warnings.catch_warnings here: it is not thread-safe and we run in a pool)
        try:
            return pydicom.dcmread(path)
        except InvalidDicomError:
            # Old files without the 128-byte preamble / File Meta (e.g. ACR-NEMA style)
            ds = pydicom.dcmread(path, force=True)
            if "PixelData" not in ds and "SOPClassUID" not in ds and "Rows" not in ds:
                raise UnsupportedImage(
                    f"{os.path.basename(str(path))} is not a DICOM file (no 'DICM' prefix "
                    "and no recognisable DICOM elements); send a DICOM Part 10 file"
                ) from None
            return ds
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except UnsupportedImage:
        raise
    except Exception as exc:  # pydicom raises many types on a damaged header
        raise CorruptPixelData(
            f"cannot read the DICOM file: {exc}; the file is damaged, send it again"
        ) from exc


def quiet_pydicom() -> None:
    """Drop pydicom's warnings and its log lines below ERROR (a damaged file is reported by
    our own errors). pydicom sets up its logger when first imported, which this module
    has done, so a level set now stays."""
    warnings.filterwarnings("ignore", module="pydicom")
    logging.getLogger("pydicom").setLevel(logging.ERROR)


def read_display_defaults(path_or_file, into: dict | None = None) -> dict:
    """The file's own display hints, read from the header only (no pixel data):
    ``{"window": [centre, width] or None, "fps": float or None, "is_color": bool}``.

    Raises what pydicom raises on an unreadable header; the values found before the error
    are already in ``into`` (when given), so a caller may keep them."""
    out = into if into is not None else {"window": None, "fps": None, "is_color": False}
    ds = pydicom.dcmread(path_or_file, stop_before_pixels=True)
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    if c is not None and w is not None:
        c = c[0] if isinstance(c, pydicom.multival.MultiValue) else c
        w = w[0] if isinstance(w, pydicom.multival.MultiValue) else w
        out["window"] = [float(c), float(w)]
    fps = ds.get("RecommendedDisplayFrameRate") or ds.get("CineRate")
    if not fps and ds.get("FrameTime"):
        fps = 1000.0 / float(ds.FrameTime)
    out["fps"] = float(fps) if fps else None
    out["is_color"] = int(ds.get("SamplesPerPixel", 1) or 1) > 1
    return out


def _ensure_transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = FileMetaDataset()
        ds.file_meta = meta
    ts = meta.get("TransferSyntaxUID")
    if ts is None:
        implicit, little = getattr(ds, "original_encoding", (True, True))
        if implicit is None:
            implicit, little = True, True
        if little:
            ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        else:
            ts = ExplicitVRBigEndian
        meta.TransferSyntaxUID = ts
    return UID(ts)


def _lut_from_item(item: Dataset, ds: Dataset, *, kind: str) -> LUT:
    desc = [int(v) for v in item.LUTDescriptor]
    nr = desc[0] or 65536
    first = desc[1]
    bits = desc[2]
    elem = item["LUTData"]
    if isinstance(elem.value, (bytes, bytearray)):
        little = ds.file_meta.TransferSyntaxUID != ExplicitVRBigEndian
        data = np.frombuffer(elem.value, dtype="<u2" if little else ">u2")[:nr]
    else:
        val = elem.value
        if not isinstance(val, (list, tuple, pydicom.multival.MultiValue)):
            val = [val]
        data = np.asarray(val, dtype=np.int64)[:nr]
    if len(data) == 0:
        raise CorruptPixelData(f"the {kind} LUT Sequence has an empty LUT Data (0028,3006)")
    data = np.asarray(data, dtype=np.uint16 if bits > 8 else np.uint8)
    if kind == "modality" and first >= 32768 and ds.get("PixelRepresentation", 0) == 1:
        first -= 65536  # descriptor stored as US for a signed image
    return LUT(first_mapped=int(first), data=np.ascontiguousarray(data), bits=int(bits))


def _fg_item(ds: Dataset, frame: int, seq: str) -> Dataset | None:
    """Functional group macro ``seq`` for ``frame``: per-frame first, then shared."""
    pffg = ds.get("PerFrameFunctionalGroupsSequence")
    if pffg is not None and frame < len(pffg):
        s = pffg[frame].get(seq)
        if s:
            return s[0]
    sfg = ds.get("SharedFunctionalGroupsSequence")
    if sfg:
        s = sfg[0].get(seq)
        if s:
            return s[0]
    return None


def _fg_value(ds: Dataset, frame: int, seq: str, keyword: str) -> Any:
    item = _fg_item(ds, frame, seq)
    if item is not None and keyword in item:
        return item.get(keyword)
    return ds.get(keyword)


def _first(value: Any) -> Any:
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return value[0] if len(value) else None
    return value


def _float(value: Any) -> float | None:
    try:
        v = float(_first(value))
    except (TypeError, ValueError, IndexError):
        return None
    return v if np.isfinite(v) else None


def _parse_window(center: Any, width: Any, function: Any) -> Window | None:
    c, w = _float(center), _float(width)
    if c is None or w is None:
        return None
    fn = str(_first(function) or "LINEAR").strip().upper() or "LINEAR"
    if fn not in WINDOW_FUNCTIONS:
        log.debug("ignoring unknown VOI LUT Function %r", fn)
        fn = "LINEAR"
    if (fn == "LINEAR" and w < 1) or w <= 0:
        return None
    return Window(c, w, fn)


# --------------------------------------------------------------------------- decoding


def _decode_jpeg_baseline(ds: Dataset, frames: int, color: bool) -> np.ndarray | None:
    """Fast path: libjpeg-turbo (simplejpeg) for 8-bit baseline JPEG. None -> use pydicom."""
    try:
        import simplejpeg
        from pydicom.encaps import generate_frames

        out = None
        for i, buf in enumerate(generate_frames(ds.PixelData, number_of_frames=frames)):
            img = simplejpeg.decode_jpeg(buf, colorspace="RGB" if color else "GRAY")
            if out is None:
                shape = (frames,) + img.shape if color else (frames,) + img.shape[:2]
                out = np.empty(shape, np.uint8)
            out[i] = img if color else img[..., 0] if img.ndim == 3 else img
        return out
    except Exception as exc:  # anything odd: let pydicom's own decoder try
        log.debug("simplejpeg fast path failed (%s); falling back to pydicom", exc)
        return None


def _decode(ds: Dataset, ts: UID, frames: int, color: bool) -> np.ndarray:
    from pydicom.pixels import get_decoder, pixel_array

    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise UnsupportedImage(
            f"transfer syntax {ts} ({getattr(ts, 'name', '?')}) is not supported; "
            "ask the sender to use an uncompressed, JPEG, JPEG-LS, JPEG 2000 or RLE syntax"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(
            f"{k}: {', '.join(v)}" for k, v in decoder.missing_dependencies.items()
        ) if hasattr(decoder, "missing_dependencies") else ""
        raise UnsupportedImage(
            f"no decoder is installed for transfer syntax {ts.name}; install a pydicom "
            f"plugin for it ({missing})"
        )

    if ts == JPEGBaseline8Bit and ds.get("BitsAllocated") == 8:
        arr = _decode_jpeg_baseline(ds, frames, color)
        if arr is not None and arr.shape[1:3] == (ds.Rows, ds.Columns):
            return arr

    plugins = []
    pref = _PREFERRED_PLUGIN.get(ts)
    if pref and pref in decoder.available_plugins:
        plugins.append(pref)
    plugins.append("")
    last: Exception | None = None
    for plugin in plugins:
        try:
            return pixel_array(ds, decoding_plugin=plugin)
        except Exception as exc:
            last = exc
            log.debug("decoding with plugin %r failed: %s", plugin or "default", exc)
    raise CorruptPixelData(
        f"the Pixel Data (7FE0,0010) cannot be decoded as {ts.name}: {last}; the file is "
        "probably truncated or damaged, send it again"
    ) from last


def _to_native(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


def _scale_to_u8(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    maxv = float((1 << bits) - 1) if bits > 0 else 255.0
    out = np.rint(arr.astype(np.float64) * (255.0 / maxv))
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _palette_to_rgb(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    if ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian:
        # pydicom 3.0.2 reads OW palette data of big endian files as little endian
        # (OBXXXX1A_expb.dcm renders almost black); hand it little endian words.
        for c in ("Red", "Green", "Blue"):
            kw = f"{c}PaletteColorLookupTableData"
            if kw in ds and isinstance(ds[kw].value, (bytes, bytearray)) and len(ds[kw].value) % 2 == 0:
                ds[kw].value = np.frombuffer(ds[kw].value, ">u2").astype("<u2").tobytes()
    try:
        rgb = apply_color_lut(arr, ds)
    except Exception as exc:
        raise CorruptPixelData(
            f"the Palette Color Lookup Table cannot be applied: {exc}; the file's palette "
            "attributes (0028,1101-1203) are damaged"
        ) from exc
    if rgb.dtype != np.uint8:
        # 16-bit palette entries: keep the high byte (as DCMTK does)
        rgb = (rgb.astype(np.uint16) >> 8).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def load_image(path: str | os.PathLike, max_bytes: int | None = None) -> DecodedImage:
    """Read and decode every frame of a DICOM file.

    Raises CorruptPixelData / UnsupportedImage (see module doc), ImageTooLarge (header over
    ``max_bytes``, default max_decoded_mb, checked before decoding); FileNotFoundError and
    PermissionError pass through unchanged.
    """
    ds = _read(path)
    return image_from_dataset(ds, max_bytes)


def image_from_dataset(ds: Dataset, max_bytes: int | None = None) -> DecodedImage:
    """Same as :func:`load_image` for an already read dataset (it may be modified)."""
    check_decoded_size(ds, max_bytes)
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedImage(
                "float pixel data (7FE0,0008/0009) is not supported for display; "
                "export the image with integer Pixel Data (7FE0,0010)"
            )
        raise CorruptPixelData(
            "Pixel Data (7FE0,0010) missing: the file holds no image (or it was cut short "
            "in transfer); send the complete file again"
        )
    for kw, tag in (("Rows", "0028,0010"), ("Columns", "0028,0011"),
                    ("BitsAllocated", "0028,0100")):
        if kw not in ds or ds[kw].value in (None, "", 0):
            raise CorruptPixelData(f"{kw} ({tag}) missing or zero: the image header is incomplete")
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    if not photometric:
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        photometric = "RGB" if spp == 3 else "MONOCHROME2"
        ds.PhotometricInterpretation = photometric
    if photometric not in GREY_PHOTOMETRICS + COLOUR_PHOTOMETRICS:
        raise UnsupportedImage(
            f"Photometric Interpretation '{photometric}' is not supported; convert the image "
            "to MONOCHROME2, RGB or YBR_FULL"
        )
    if "SamplesPerPixel" not in ds:
        ds.SamplesPerPixel = 3 if photometric.startswith(("RGB", "YBR")) else 1
    if "PixelRepresentation" not in ds:
        ds.PixelRepresentation = 0
    if "BitsStored" not in ds:
        ds.BitsStored = ds.BitsAllocated
    ts = _ensure_transfer_syntax(ds)
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    frames = max(frames, 1)
    is_color = photometric not in GREY_PHOTOMETRICS
    three = int(ds.SamplesPerPixel) == 3

    arr = _decode(ds, ts, frames, three)
    arr = _to_native(arr)
    if arr.dtype.kind == "f":
        raise UnsupportedImage("floating point stored pixels are not supported")
    expected_ndim = 4 if three else 3
    if arr.ndim == expected_ndim - 1:
        arr = arr[np.newaxis]
    if arr.ndim != expected_ndim:
        raise CorruptPixelData(
            f"decoded pixel array has shape {arr.shape}, which does not match Rows, Columns, "
            "Samples per Pixel and Number of Frames"
        )
    bits_stored = int(ds.BitsStored)

    if photometric == "PALETTE COLOR":
        arr = _palette_to_rgb(arr, ds)
    elif three:
        arr = np.ascontiguousarray(_scale_to_u8(arr, bits_stored))
    frames = arr.shape[0]

    img = DecodedImage(
        pixels=arr,
        photometric=photometric,
        is_color=is_color,
        bits_stored=bits_stored,
        signed=int(ds.PixelRepresentation) == 1,
        transfer_syntax=str(ts),
        modality=ds.get("Modality"),
        sop_instance_uid=ds.get("SOPInstanceUID"),
        series_instance_uid=ds.get("SeriesInstanceUID"),
        frame_of_reference_uid=ds.get("FrameOfReferenceUID"),
    )
    _fill_geometry(img, ds, frames)
    _fill_timing(img, ds)
    if not is_color:
        _fill_grey_display(img, ds, frames)
    return img


def _fill_geometry(img: DecodedImage, ds: Dataset, frames: int) -> None:
    spacing = _fg_value(ds, 0, "PixelMeasuresSequence", "PixelSpacing")
    source = "PixelSpacing"
    if not spacing:
        spacing = ds.get("ImagerPixelSpacing")
        source = "ImagerPixelSpacing"
    try:
        if spacing and len(spacing) >= 2:
            sp = (float(spacing[0]), float(spacing[1]))
            if all(np.isfinite(sp)) and min(sp) > 0:
                img.pixel_spacing, img.spacing_source = sp, source
    except (TypeError, ValueError):
        pass
    img.slice_thickness = _float(_fg_value(ds, 0, "PixelMeasuresSequence", "SliceThickness"))
    positions, orientations = [], []
    for f in range(frames):
        p = _fg_value(ds, f, "PlanePositionSequence", "ImagePositionPatient")
        o = _fg_value(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient")
        try:
            positions.append([float(v) for v in p] if p is not None and len(p) == 3 else None)
            orientations.append([float(v) for v in o] if o is not None and len(o) == 6 else None)
        except (TypeError, ValueError):
            positions.append(None)
            orientations.append(None)
    if all(p is not None for p in positions):
        img.positions = np.asarray(positions, dtype=np.float64)
    if all(o is not None for o in orientations):
        img.orientations = np.asarray(orientations, dtype=np.float64)


def _fill_timing(img: DecodedImage, ds: Dataset) -> None:
    ft = _float(ds.get("FrameTime"))
    if ft is None:
        vec = ds.get("FrameTimeVector")
        if vec and len(vec) > 1:
            ft = _float(float(np.mean([float(v) for v in list(vec)[1:]])))
    img.frame_time_ms = ft if ft and ft > 0 else None
    cr = _float(ds.get("CineRate"))
    img.cine_rate = cr if cr and cr > 0 else None
    rf = _float(ds.get("RecommendedDisplayFrameRate"))
    img.recommended_fps = rf if rf and rf > 0 else None


def _fill_grey_display(img: DecodedImage, ds: Dataset, frames: int) -> None:
    img.invert = img.photometric == "MONOCHROME1"
    mlut = ds.get("ModalityLUTSequence")
    if mlut:
        img.modality_lut = _lut_from_item(mlut[0], ds, kind="modality")
    slopes, intercepts, windows = [], [], []
    for f in range(frames):
        item = _fg_item(ds, f, "PixelValueTransformationSequence")
        src = item if item is not None and "RescaleSlope" in item else ds
        s = _float(src.get("RescaleSlope"))
        b = _float(src.get("RescaleIntercept"))
        if s is None or s == 0 or b is None:
            s, b = 1.0, 0.0
        slopes.append(s)
        intercepts.append(b)
        vitem = _fg_item(ds, f, "FrameVOILUTSequence")
        vsrc = vitem if vitem is not None and "WindowCenter" in vitem else ds
        windows.append(
            _parse_window(vsrc.get("WindowCenter"), vsrc.get("WindowWidth"),
                          vsrc.get("VOILUTFunction"))
        )
    img.slopes = np.asarray(slopes, dtype=np.float64)
    img.intercepts = np.asarray(intercepts, dtype=np.float64)
    img.windows = windows
    vlut = ds.get("VOILUTSequence")
    if vlut:
        try:
            img.voi_lut = _lut_from_item(vlut[0], ds, kind="VOI")
        except CorruptPixelData:
            raise
        except Exception as exc:
            log.debug("ignoring unreadable VOI LUT Sequence: %s", exc)
    img.default_window = default_window(img)


def default_window(img: DecodedImage) -> Window:
    """A window spanning the modality-LUT-transformed minimum..maximum of all frames."""
    px = img.pixels
    if px.size == 0:
        return Window(0.5, 1.0)
    lo_s, hi_s = float(px.min()), float(px.max())
    if img.modality_lut is not None:
        vals = img.modality_lut.apply(np.array([lo_s, hi_s]))
        # a LUT need not be monotonic: take the range over the used part of the table
        lo_i = int(np.clip(lo_s - img.modality_lut.first_mapped, 0, len(img.modality_lut.data) - 1))
        hi_i = int(np.clip(hi_s - img.modality_lut.first_mapped, 0, len(img.modality_lut.data) - 1))
        used = img.modality_lut.data[lo_i:hi_i + 1]
        lo, hi = (float(used.min()), float(used.max())) if used.size else (float(vals[0]), float(vals[1]))
    else:
        cand = np.concatenate([img.slopes * lo_s + img.intercepts, img.slopes * hi_s + img.intercepts])
        lo, hi = float(cand.min()), float(cand.max())
    width = max(hi - lo + 1.0, 1.0)
    return Window(center=(lo + hi) / 2.0 + 0.5, width=width, function="LINEAR")


__all__: Sequence[str] = (
    "DecodedImage",
    "LUT",
    "Window",
    "load_image",
    "image_from_dataset",
    "default_window",
    "WINDOW_FUNCTIONS",
)
