"""A modality that labels GBK text ISO_IR 100 (issue 15, item 5): the patient showed as
"Áõ^Ñó"; dicom_charset_overrides names the calling AE title and the character set its files
really use. Sent with dcmtk's storescu; the stored original is unchanged."""
from __future__ import annotations

import pytest

from adapters.dicom_net import parse_charset_overrides
from models.schema import Instance, Patient
from tests.dicom_factory import ct_dataset

from .test_dicom_scp import storescu

pytestmark = pytest.mark.db


@pytest.fixture
def scp(ctx):
    from adapters.dicom_net import DicomScp
    s = DicomScp(ctx.catalog, ae_title="CLOUDFILM", host="127.0.0.1", port=0,
                 allowed_aets=["US01", "STORESCU"], fast_copies=False,
                 charset_overrides=parse_charset_overrides("us01=GBK")).start()
    yield s
    s.stop()


def _mislabelled(tmp_path, patient_id: str):
    ds = ct_dataset(patient_id=patient_id, charset="ISO_IR 100",
                    name="刘^洋".encode("gbk").decode("latin-1"))   # GBK bytes, labelled Latin-1
    path = tmp_path / f"{patient_id}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_named_sender_is_read_in_its_real_charset(scp, tmp_path, ctx):
    for aet, pid in (("US01", "PCH1"), ("STORESCU", "PCH2")):
        path = _mislabelled(tmp_path, pid)
        out = storescu(scp.port, [path], aet=aet)
        assert out.returncode == 0, out.stderr
    assert Patient.get(Patient.patient_id == "PCH1").name in ("刘洋", "刘 洋")
    assert "刘" not in Patient.get(Patient.patient_id == "PCH2").name      # no override: as labelled
    for inst in Instance.select():
        kept = ctx.storage.abspath(inst.file_path).read_bytes()
        assert b"ISO_IR 100" in kept and "刘".encode("gbk") in kept        # original unchanged


def test_override_setting_is_checked():
    assert parse_charset_overrides(" us01 = gbk ,CT2=ISO_IR 192") == {"US01": "GBK",
                                                                      "CT2": "ISO_IR 192"}
    for bad in ("US01", "US01=KOI8", "=GBK", "A" * 17 + "=GBK"):
        with pytest.raises(ValueError, match="dicom_charset_overrides"):
            parse_charset_overrides(bad)
