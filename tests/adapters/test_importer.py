"""Import of files, folders, DICOMDIR media and ZIP archives, with real DICOM files."""
import hashlib
import io
import shutil
import zipfile

import pytest

from adapters.dicom_meta import extract_meta
from adapters.importer import Importer, format_summary
from models.schema import Exam, Instance, InstanceVersion, Patient, Quarantine
from tests.conftest import corpus_dir, corpus_files
from tests.dicom_factory import ct_bytes, ct_dataset, to_bytes

pytestmark = pytest.mark.db


@pytest.fixture
def importer(catalog):
    return Importer(catalog, charset_fallback="GB18030")


def stored_files(catalog):
    return sorted((catalog.storage.root / "dicom").rglob("*.dcm"))


def assert_no_orphans(catalog):
    on_disk = {p.relative_to(catalog.storage.root).as_posix() for p in stored_files(catalog)}
    indexed = {i.file_path for i in Instance.select()} | {
        v.file_path for v in InstanceVersion.select()}          # replaced versions, kept
    assert on_disk == indexed
    assert not list(catalog.storage.root.rglob(".tmp-*"))


def test_whole_corpus_imports_or_rejects_with_reasons(importer, catalog):
    files = corpus_files()
    assert len(files) >= 60
    s = importer.run([corpus_dir()])
    assert s.total == len(files)
    assert s.imported >= 30
    reasons = dict(s.rejected)
    for name, reason in s.rejected:
        assert reason and len(reason) > 10, name
        assert "internal error" not in reason, (name, reason)
    by_name = {k.rsplit("/", 1)[-1]: v for k, v in reasons.items()}
    assert "not a DICOM Part 10 file" in by_name["OT-PAL-8-face.dcm"]
    assert "truncated" in by_name["emri_small_jpeg_2k_lossless_too_short.dcm"]
    assert "Patient ID" in by_name["emri_small.dcm"]
    # the same SOP Instance UID in several encodings (models/versions.py): the same pixels
    # and attributes are already present, other pixels or attributes a new version, another
    # SOP class refused
    assert s.already_present >= 4 and s.versions >= 10
    assert "SOPClassUID" in by_name["OBXXXX1A_rle_2frame.dcm"]
    assert_no_orphans(catalog)
    for inst in Instance.select():
        data = catalog.storage.abspath(inst.file_path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == inst.sha256
    # every rejected file is kept in quarantine with its reason
    assert Quarantine.select().count() == len(s.rejected)
    # second import: every stored file is already present, nothing new
    s2 = importer.run([corpus_dir()])
    assert s2.imported == 0 and s2.already_present == s.imported + s.already_present
    assert Instance.select().count() == s.imported - s.versions
    assert "already present: " in format_summary(s2)


def test_non_dicom_empty_and_missing(importer, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "empty_dir").mkdir()
    s = importer.run([tmp_path / "notes.txt", tmp_path / "empty.dcm", tmp_path / "empty_dir",
                      tmp_path / "nope"])
    reasons = [r for _, r in s.rejected]
    assert any("not a DICOM" in r for r in reasons)
    assert any(r == "empty file" for r in reasons)
    assert any("empty folder" in r for r in reasons)
    assert any("no such file" in r for r in reasons)
    assert s.imported == 0


def test_truncated_native_pixel_data(importer, tmp_path):
    data = ct_bytes(size=64)
    (tmp_path / "cut.dcm").write_bytes(data[:-3000])
    s = importer.run([tmp_path / "cut.dcm"])
    assert s.imported == 0
    assert "truncated" in s.rejected[0][1]


def test_truncated_header(importer, tmp_path):
    (tmp_path / "head.dcm").write_bytes(ct_bytes()[:200])
    s = importer.run([tmp_path / "head.dcm"])
    assert s.imported == 0 and s.rejected


def test_no_pixel_data(importer, tmp_path):
    ds = ct_dataset()
    del ds.PixelData
    (tmp_path / "nopix.dcm").write_bytes(to_bytes(ds))
    s = importer.run([tmp_path / "nopix.dcm"])
    assert "Pixel Data (7FE0,0010) missing" in s.rejected[0][1]


def test_zip_with_path_traversal(importer, catalog, tmp_path):
    z = tmp_path / "cd.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("study/1.dcm", ct_bytes(sop_uid="1.2.5.1"))
        zf.writestr("../../x.dcm", ct_bytes(sop_uid="1.2.5.2"))
        zf.writestr("/etc/passwd.dcm", ct_bytes(sop_uid="1.2.5.3"))
        zf.writestr("readme.txt", "not dicom")
    s = importer.run([z])
    assert s.imported == 1
    unsafe = [r for n, r in s.rejected if "unsafe path" in r]
    assert len(unsafe) == 2
    assert not (tmp_path.parent / "x.dcm").exists()
    assert_no_orphans(catalog)


def test_corrupt_zip(importer, tmp_path):
    z = tmp_path / "bad.zip"
    good = io.BytesIO()
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("a.dcm", ct_bytes())
    z.write_bytes(good.getvalue()[:-30])
    s = importer.run([z])
    assert s.imported == 0 and s.rejected


def test_dicomdir_media(importer, catalog, tmp_path):
    from pydicom.fileset import FileSet
    fs = FileSet()
    study = "1.2.6.1"
    for i in range(3):
        fs.add(ct_dataset(study_uid=study, series_uid="1.2.6.2", sop_uid=f"1.2.6.3.{i}", z=i))
    media = tmp_path / "cdrom"
    fs.write(media)
    s = importer.run([media / "DICOMDIR"])
    assert s.imported == 3, format_summary(s)
    s2 = importer.run([media])          # the folder walk skips DICOMDIR itself
    assert s2.already_present == 3 and not s2.rejected


@pytest.mark.parametrize("charset,raw", [
    ("GB18030", "张^伟".encode("gb18030")),
    ("GBK", "张^伟".encode("gbk")),
    ("ISO_IR 192", "张^伟".encode("utf-8")),
    (["", "ISO 2022 IR 58"], b"Zhang^Wei=\x1b$)A" + "张".encode("gb2312") + b"^\x1b$)A"
     + "伟".encode("gb2312") + b"=zhang^wei"),
    (None, "张^伟".encode("gb18030")),            # no (0008,0005): fallback GB18030
])
def test_chinese_names_decode(importer, tmp_path, charset, raw):
    ds = ct_dataset(charset=charset)
    ds.add_new(0x00100010, "PN", raw)
    (tmp_path / "a.dcm").write_bytes(to_bytes(ds))
    s = importer.run([tmp_path / "a.dcm"])
    assert s.imported == 1
    assert Patient.get().name == "张伟"


def test_fallback_is_configurable(catalog, tmp_path):
    ds = ct_dataset()
    ds.add_new(0x00100010, "PN", "张^伟".encode("gb18030"))
    meta, _ = extract_meta(to_bytes(ds), charset_fallback="ISO_IR 100")
    assert meta["patient_name"] != "张伟"      # what the fallback exists to prevent


def test_categories_from_modalities(importer, tmp_path):
    for i, mod in enumerate(["CT", "US", "ES", "SM"]):
        (tmp_path / f"{i}.dcm").write_bytes(ct_bytes(modality=mod, accession=f"X{i}"))
    importer.run([tmp_path])
    assert sorted(e.category for e in Exam.select()) == [
        "endoscopy", "pathology", "radiology", "ultrasound"]


def test_symlinks_are_not_followed(importer, tmp_path):
    (tmp_path / "d").mkdir()
    target = tmp_path / "real.dcm"
    target.write_bytes(ct_bytes())
    (tmp_path / "d" / "link.dcm").symlink_to(target)
    s = importer.run([tmp_path / "d"])
    assert s.imported == 0 and "not a regular file" in s.rejected[0][1]
