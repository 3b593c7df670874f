"""Compressed originals get a native copy at import; the original stays byte-exact."""
import hashlib

import numpy as np
import pydicom
import pytest

from adapters.importer import Importer
from models.schema import Instance
from tests.dicom_factory import ct_dataset, to_bytes

pytestmark = pytest.mark.db


def test_j2k_import_makes_an_identical_fast_copy(catalog, tmp_path):
    from pydicom.uid import JPEG2000Lossless, RLELossless
    originals = {}
    for i, ts in enumerate([JPEG2000Lossless, RLELossless, JPEG2000Lossless, RLELossless,
                            JPEG2000Lossless]):
        ds = ct_dataset(study_uid="1.2.88.1", series_uid="1.2.88.2", sop_uid=f"1.2.88.3.{i}",
                        size=64, z=float(i))
        rng = np.random.default_rng(i)
        ds.PixelData = rng.integers(-1000, 2000, (64, 64), dtype=np.int16).tobytes()
        ds.compress(ts)
        data = to_bytes(ds)
        originals[ds.SOPInstanceUID] = data
        (tmp_path / f"{i}.dcm").write_bytes(data)
    s = Importer(catalog).run([tmp_path])
    assert s.imported == 5 and s.fast_copies == 5
    st = catalog.storage
    for inst in Instance.select():
        orig = st.abspath(inst.file_path)
        assert orig.read_bytes() == originals[inst.sop_uid]          # byte-exact original
        assert hashlib.sha256(orig.read_bytes()).hexdigest() == inst.sha256
        copy = st.abspath(st.fast_copy_relpath("1.2.88.1", "1.2.88.2", inst.sop_uid))
        a = pydicom.dcmread(orig).pixel_array
        c = pydicom.dcmread(copy)
        assert c.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        np.testing.assert_array_equal(a, c.pixel_array)


def test_uncompressed_needs_no_copy(catalog, tmp_path):
    (tmp_path / "a.dcm").write_bytes(to_bytes(ct_dataset()))
    s = Importer(catalog).run([tmp_path])
    assert s.imported == 1 and s.fast_copies == 0
    # derived/ holds only its WADO-RS metadata sidecar, no copy
    files = [p for p in (catalog.storage.root / "derived").rglob("*") if p.is_file()]
    assert [p.suffix for p in files] == [".json"]


def test_never_seen_compressed_frame_is_decoded_in_a_worker_process(live, catalog, tmp_path):
    """Imported without fast copies: the server decodes in a worker process, leaves a copy."""
    from pydicom.uid import JPEG2000Lossless
    ds = ct_dataset(study_uid="1.2.89.1", series_uid="1.2.89.2", sop_uid="1.2.89.3", size=64)
    ds.PixelData = np.full((64, 64), 1064, np.int16).tobytes()
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    (tmp_path / "a.dcm").write_bytes(to_bytes(ds))
    s = Importer(catalog, fast_copies=False).run([tmp_path])
    assert s.imported == 1 and s.fast_copies == 0
    st = catalog.storage
    copy = st.abspath(st.fast_copy_relpath("1.2.89.1", "1.2.89.2", "1.2.89.3"))
    assert not copy.exists()
    status, _, body = live.get("/dicomweb/studies/1.2.89.1/series/1.2.89.2/instances/1.2.89.3/"
                               "frames/1/rendered?window=40,400")
    assert status == 200, body
    assert copy.exists()


class _CountingStorage:
    """The real folder storage; counts how often each stored file is read."""

    def __new__(cls, root):
        import collections

        from models.storage import Storage

        class Counting(Storage):
            def open(self, relpath):
                self.reads[relpath] += 1
                return super().open(relpath)

            def local_path(self, relpath):      # path_or_file hands the path to pydicom
                self.reads[relpath] += 1
                return super().local_path(relpath)

        st = Counting(root)
        st.reads = collections.Counter()
        return st


# one file per compressed syntax and photometric the viewer meets: 16-bit J2K, J2K colour
# (YBR_RCT), J2K multi-frame, JPEG-LS, RLE palette colour, 8-bit JPEG baseline YBR 120 frames
DECODE_ONCE_FILES = ["MR2_J2KR.dcm", "US1_J2KR.dcm", "emri_small_jpeg_2k_lossless.dcm",
                     "emri_small_jpeg_ls_lossless.dcm", "OBXXXX1A_rle.dcm", "JPEG-LL.dcm",
                     "color3d_jpeg_baseline.dcm"]


@pytest.mark.parametrize("name", DECODE_ONCE_FILES)
def test_never_seen_original_is_read_once_and_decodes_like_its_copy(tmp_path, name):
    """The worker's job on a never-seen compressed frame (decode_keeping_copy) reads and
    decodes the original once and answers from what it decoded, not from reading the copy
    it just wrote back; the image equals the copy's, pixel for pixel, fact for fact."""
    import dataclasses
    import shutil

    from adapters.fast_copy import decode_keeping_copy
    from render.decode import load_image
    from tests.conftest import corpus_dir
    st = _CountingStorage(tmp_path)
    st.ensure()
    shutil.copy(corpus_dir() / name, tmp_path / "dicom" / name)
    src, dst = f"dicom/{name}", st.fast_copy_of(f"dicom/{name}")

    img = decode_keeping_copy(st, src, dst)

    assert st.exists(dst)
    assert st.reads == {src: 1}, st.reads          # the copy was not read back
    ref = load_image(st.abspath(dst))
    np.testing.assert_array_equal(img.pixels, ref.pixels)
    assert img.pixels.dtype == ref.pixels.dtype and img.pixels.flags.c_contiguous
    for f in dataclasses.fields(ref):
        if f.name != "pixels":
            a, b = getattr(img, f.name), getattr(ref, f.name)
            if isinstance(b, np.ndarray):
                np.testing.assert_array_equal(a, b, err_msg=f.name)
            else:
                assert repr(a) == repr(b), f.name
    # a second request (another server process, after eviction) reads the copy only
    st.reads.clear()
    again = decode_keeping_copy(st, src, dst)
    assert st.reads == {dst: 1}
    np.testing.assert_array_equal(again.pixels, ref.pixels)


def test_undecodable_original_still_names_the_problem(tmp_path):
    """No copy can be made of a truncated J2K: the worker decodes the original and raises the
    error that says what is wrong (as before)."""
    import shutil

    from adapters.fast_copy import decode_keeping_copy
    from render.errors import RenderError
    from tests.conftest import corpus_dir
    st = _CountingStorage(tmp_path)
    st.ensure()
    name = "emri_small_jpeg_2k_lossless_too_short.dcm"
    shutil.copy(corpus_dir() / name, tmp_path / "dicom" / name)
    with pytest.raises(RenderError):
        decode_keeping_copy(st, f"dicom/{name}", st.fast_copy_of(f"dicom/{name}"))
    assert not st.exists(st.fast_copy_of(f"dicom/{name}"))
