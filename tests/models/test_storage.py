import os
import time

import pytest

from models.storage import Storage, StorageError, valid_uid


def test_uid_grammar():
    assert valid_uid("1.2.840.10008.1.2")
    for bad in ("", "1..2", "../etc", "1.2.a", "1" * 65, "1.2/3", ".1"):
        assert not valid_uid(bad)


def test_paths_refuse_hostile_uids(tmp_path):
    s = Storage(tmp_path)
    with pytest.raises(StorageError) as e:
        s.instance_relpath("1.2", "1.3", "../../x")
    assert "SOP Instance UID" in str(e.value)


def test_atomic_write_never_overwrites(tmp_path):
    s = Storage(tmp_path)
    assert s.write_atomic("dicom/1/2/3.dcm", b"first")
    assert not s.write_atomic("dicom/1/2/3.dcm", b"second")
    assert (tmp_path / "dicom/1/2/3.dcm").read_bytes() == b"first"
    assert not [p for p in (tmp_path / "dicom/1/2").iterdir() if p.name.startswith(".tmp-")]


def test_stale_temp_files_are_removed(tmp_path):
    s = Storage(tmp_path)
    (tmp_path / "dicom/1").mkdir(parents=True)
    stale = tmp_path / "dicom/1/.tmp-abc"
    fresh = tmp_path / "dicom/1/.tmp-def"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert s.clean_stale_temp_files() == 1
    assert not stale.exists() and fresh.exists()


def test_abspath_stays_inside(tmp_path):
    s = Storage(tmp_path / "data")
    with pytest.raises(StorageError):
        s.abspath("../outside")


# --------------------------------------------------------------------------- the interface
# Every backend passes the same contract; the second one keeps files in memory, as an object
# store would (no local paths), and the whole server runs on it unchanged (tests below).

import hashlib
import io
import threading

from models.storage import PutResult, StorageBackend, check_relpath, sha256_bytes


class MemoryStorage(StorageBackend):
    """Files in a dict: a backend without local paths."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put_atomic(self, relpath, data, *, durable=True):
        check_relpath(relpath)
        blob = bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else data.read()
        with self._lock:
            written = relpath not in self.files
            if written:
                self.files[relpath] = blob
        return PutResult(written, len(blob), sha256_bytes(blob))

    def open(self, relpath):
        try:
            return io.BytesIO(self.files[check_relpath(relpath)])
        except KeyError:
            raise FileNotFoundError(relpath) from None

    def exists(self, relpath):
        return check_relpath(relpath) in self.files

    def size(self, relpath):
        with self.open(relpath) as fh:
            return len(fh.getbuffer())

    def remove(self, relpath):
        with self._lock:
            self.files.pop(check_relpath(relpath), None)

    def local_path(self, relpath):
        check_relpath(relpath)
        return None


@pytest.fixture(params=["local", "memory"])
def backend(request, tmp_path):
    return Storage(tmp_path / "data") if request.param == "local" else MemoryStorage()


REL = "dicom/1.2/1.3/1.4.dcm"


def test_contract_put_is_byte_exact_and_reports_size_and_hash(backend):
    data = bytes(range(256)) * 1000
    r = backend.put_atomic(REL, data)
    assert r and r.written and r.size == len(data)
    assert r.sha256 == hashlib.sha256(data).hexdigest()
    assert backend.exists(REL) and backend.size(REL) == len(data)
    assert backend.read(REL) == data
    assert backend.sha256(REL) == hashlib.sha256(data).hexdigest()


def test_contract_put_never_overwrites(backend):
    assert backend.put_atomic(REL, b"first").written
    r = backend.put_atomic(REL, b"second")
    assert not r and r.size == 6 and r.sha256 == sha256_bytes(b"second")
    assert not backend.write_atomic(REL, b"third")
    assert backend.read(REL) == b"first"


def test_contract_put_from_a_stream(backend):
    data = b"\x00\xff" * (3 << 20)                   # several read blocks
    r = backend.put_atomic(REL, io.BytesIO(data))
    assert r.written and r.size == len(data) and r.sha256 == hashlib.sha256(data).hexdigest()
    assert backend.read(REL) == data


def test_contract_open_is_a_seekable_binary_file(backend):
    backend.put_atomic(REL, b"0123456789")
    with backend.open(REL) as fh:
        assert fh.seekable()
        assert fh.seek(0, os.SEEK_END) == 10
        fh.seek(3)
        assert fh.read(4) == b"3456"


def test_contract_missing_files(backend):
    assert not backend.exists(REL)
    for call in (backend.open, backend.size, backend.sha256):
        with pytest.raises(FileNotFoundError):
            call(REL)
    backend.remove(REL)                               # nothing to remove: no error
    backend.put_atomic(REL, b"x")
    backend.remove(REL)
    assert not backend.exists(REL)


@pytest.mark.parametrize("bad", ["../outside", "/etc/passwd", "dicom/../../x", "dicom//x",
                                 "dicom/./x", "dicom\\x", ""])
def test_contract_refuses_paths_outside(backend, bad):
    for call in (backend.open, backend.exists, backend.remove, backend.local_path):
        with pytest.raises(StorageError):
            call(bad)
    with pytest.raises(StorageError):
        backend.put_atomic(bad, b"x")


def test_contract_local_path_where_one_exists(backend):
    backend.put_atomic(REL, b"bytes")
    p = backend.local_path(REL)
    if isinstance(backend, Storage):
        assert p.read_bytes() == b"bytes"
    else:
        assert p is None
    with backend.path_or_file(REL) as src:            # what a decoder is given
        data = src.read_bytes() if p is not None else src.read()
    assert data == b"bytes"


def test_contract_quarantine(backend):
    rel = backend.quarantine(b"odd file")
    assert rel.startswith("quarantine/") and backend.read(rel) == b"odd file"


def test_contract_concurrent_writers_one_wins(backend):
    blobs = [bytes([i]) * 100_000 for i in range(8)]
    results = [None] * 8
    start = threading.Barrier(8)

    def put(i):
        start.wait()
        results[i] = backend.put_atomic(REL, blobs[i]).written

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 1
    assert backend.read(REL) == blobs[results.index(True)]


def test_local_put_leaves_no_temporary_files(tmp_path):
    s = Storage(tmp_path)
    s.put_atomic("dicom/1/2/3.dcm", io.BytesIO(b"x" * 10))
    s.put_atomic("dicom/1/2/3.dcm", b"y")
    assert [p.name for p in (tmp_path / "dicom/1/2").iterdir()] == ["3.dcm"]


# --------------------------------------------------------- the server on the second backend

@pytest.fixture
def mem_ctx(config):
    from server.context import open_context
    c = open_context(config, storage=MemoryStorage())
    yield c
    c.close()


@pytest.mark.db
def test_import_download_render_and_scrub_on_a_backend_without_local_files(
        mem_ctx, config, tmp_path):
    import zipfile

    import numpy as np
    from pydicom.uid import RLELossless

    from adapters.importer import Importer
    from models.schema import Exam, Instance
    from server.maintenance import scrub_once
    from tests.conftest import LiveServer, staff_token
    from tests.dicom_factory import ct_dataset, to_bytes

    storage = mem_ctx.storage
    originals = {}
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        ds = ct_dataset(study_uid="1.2.91.1", series_uid="1.2.91.2", sop_uid=f"1.2.91.3.{i}",
                        size=64, z=float(i))
        ds.PixelData = np.full((64, 64), 100 * i, np.int16).tobytes()
        if i == 1:
            ds.compress(RLELossless, generate_instance_uid=False)   # gets a fast copy
        originals[ds.SOPInstanceUID] = to_bytes(ds)
        (src / f"{i}.dcm").write_bytes(originals[ds.SOPInstanceUID])
    s = Importer(mem_ctx.catalog).run([src])
    assert s.imported == 2 and s.fast_copies == 1
    for inst in Instance.select():
        assert storage.read(inst.file_path) == originals[inst.sop_uid]        # byte-exact
    assert storage.exists("derived/1.2.91.1/1.2.91.2/1.2.91.3.1.dcm")
    exam = Exam.get(Exam.study_uid == "1.2.91.1")
    mem_ctx.catalog.store_report(exam, pdf=b"%PDF-1.4 report\n%%EOF\n", status="final")
    assert not (config.path("data_dir") / "dicom").exists()      # nothing went to the folder

    live = LiveServer(mem_ctx)
    try:
        live.token = staff_token("dl", ("doctor",))
        status, headers, body = live.get("/api/download/studies/1.2.91.1.zip")
        assert status == 200, body
        zf = zipfile.ZipFile(io.BytesIO(body))
        assert zf.testzip() is None and "DICOMDIR" in zf.namelist()
        got = {zf.read(n) for n in zf.namelist() if n != "DICOMDIR"}
        assert got == set(originals.values())
        status, hdrs, part = live.get("/api/download/studies/1.2.91.1.zip",
                                      headers={"Range": "bytes=100-"})
        assert status == 206 and part == body[100:]
        for sop in originals:
            status, hdrs, jpeg = live.get(f"/dicomweb/studies/1.2.91.1/series/1.2.91.2/"
                                          f"instances/{sop}/frames/1/rendered?window=40,400")
            assert status == 200 and jpeg[:2] == b"\xff\xd8", jpeg[:200]
        status, _, pdf = live.get("/api/studies/1.2.91.1/report.pdf")
        assert status == 200 and pdf == b"%PDF-1.4 report\n%%EOF\n"
        # a changed original is refused on read and found by the scrub
        storage.files["dicom/1.2.91.1/1.2.91.2/1.2.91.3.0.dcm"] = b"tampered"
        mem_ctx.renders._verified.clear()
        status, _, body = live.get("/api/download/studies/1.2.91.1.zip")
        names = zipfile.ZipFile(io.BytesIO(body)).namelist()      # left out, with a note
        assert status == 200 and "MISSING.TXT" in names and b"tampered" not in body
        status, _, _ = live.get("/api/download/studies/1.2.91.1/series/1.2.91.2/instances/"
                                "1.2.91.3.0.zip")
        assert status == 503
    finally:
        live.stop()
    assert scrub_once(mem_ctx)["mismatches"] == 1
