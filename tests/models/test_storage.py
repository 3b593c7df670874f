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
