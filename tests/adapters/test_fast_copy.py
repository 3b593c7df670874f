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
    assert not (catalog.storage.root / "derived").exists()


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
