"""Fast-to-decode copies of compressed originals.

A JPEG 2000 slice costs about 27 ms to decode and every decoder holds the GIL, so a
series scrolled for the first time would be limited to ~40 frames/s per core. At ingest we
therefore decode each compressed instance once, in worker processes, and keep a copy in
Explicit VR Little Endian next to the original (data_dir/derived/…). The original stays
byte-exact and is what downloads return; the copy is derived data that can be deleted and
made again at any time.
"""
from __future__ import annotations

import logging
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)

NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
JPEG_LS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
# Uncompressed-but-awkward syntaxes (big endian, deflate) decode fast enough as they are.
NO_COPY = NATIVE_SYNTAXES | {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


def needs_fast_copy(transfer_syntax: str) -> bool:
    return bool(transfer_syntax) and transfer_syntax not in NO_COPY


def make_fast_copy(src: str | os.PathLike, dst: str | os.PathLike) -> bool:
    """Decode src and write it uncompressed at dst (atomically). False if it cannot be done
    (the viewer then decodes the original on demand)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    dst = Path(dst)
    if dst.exists():
        return True
    try:
        ds = pydicom.dcmread(src)
        ts = str(ds.file_meta.TransferSyntaxUID)
        kwargs = {"decoding_plugin": "pyjpegls"} if ts in JPEG_LS else {}
        ds.decompress(as_rgb=True, **kwargs)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    except Exception as exc:  # noqa: BLE001 - a file we cannot decode keeps its original only
        log.info("no fast copy for %s: %s", Path(src).name, type(exc).__name__)
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return True


def decode_keeping_copy(src: str, dst: str):
    """Worker-process job: make the fast copy, then decode it (or the original when no copy
    can be made). Returns a render.decode.DecodedImage."""
    from render.decode import load_image
    ok = make_fast_copy(src, dst)
    return load_image(dst if ok else src)


def _job(pair):
    return make_fast_copy(*pair)


def make_fast_copies(pairs: list[tuple[Path, Path]], workers: int | None = None) -> int:
    """Make copies for (src, dst) pairs using worker processes. Returns how many exist."""
    if not pairs:
        return 0
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(pairs) < 4:
        return sum(make_fast_copy(s, d) for s, d in pairs)
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return sum(pool.map(_job, pairs, chunksize=8))
