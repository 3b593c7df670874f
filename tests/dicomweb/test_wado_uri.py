"""WADO-URI (/wado?requestType=WADO…) against a live server, as an EMR link or an older
viewer would call it: rendered JPEG/PNG with window, size and frame, application/dicom as
stored or in explicit VR little endian, and the same access rules as WADO-RS."""
from __future__ import annotations

import io
import urllib.parse

import pydicom
import pytest
from PIL import Image

from models.db import write_transaction
from models.schema import Exam
from tests.access.conftest import create_share, open_share
from tests.conftest import corpus_dir

from .test_dicomweb import J2K, SERIES_A, SOPS_A, STUDY_A, STUDY_B, data  # noqa: F401

pytestmark = pytest.mark.db


def wado(live, auth=True, headers=None, **params):
    query = {"requestType": "WADO", "studyUID": STUDY_A, "seriesUID": SERIES_A,
             "objectUID": SOPS_A[0], **params}
    query = {k: v for k, v in query.items() if v is not None}
    return live.get("/wado?" + urllib.parse.urlencode(query), auth=auth, headers=headers or {})


def test_rendered_jpeg_png_window_size_and_frame(live, data):
    st, hdrs, body = wado(live)
    assert st == 200 and hdrs["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    st, hdrs, png = wado(live, contentType="image/png", rows="8", columns="8")
    assert st == 200 and hdrs["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(png)).size == (8, 8)
    narrow = wado(live, contentType="image/png", windowCenter="0", windowWidth="1")[2]
    wide = wado(live, contentType="image/png", windowCenter="0", windowWidth="4000")[2]
    assert Image.open(io.BytesIO(narrow)).tobytes() != Image.open(io.BytesIO(wide)).tobytes()
    # the same image as WADO-RS rendered gives
    rs = live.get(f"/dicomweb/studies/{STUDY_A}/series/{SERIES_A}/instances/{SOPS_A[0]}"
                  f"/rendered?window=0,4000&accept=image/png")[2]
    assert Image.open(io.BytesIO(rs)).tobytes() == Image.open(io.BytesIO(wide)).tobytes()
    assert wado(live, frameNumber="2")[0] == 404          # a single-frame instance
    assert wado(live, contentType="image/gif, image/png")[1]["Content-Type"] == "image/png"


def test_application_dicom_as_stored_or_explicit_le(live, data):
    j2k = pydicom.dcmread(corpus_dir() / J2K, stop_before_pixels=True)
    ids = dict(studyUID=str(j2k.StudyInstanceUID), seriesUID=str(j2k.SeriesInstanceUID),
               objectUID=str(j2k.SOPInstanceUID), contentType="application/dicom")
    stored = str(j2k.file_meta.TransferSyntaxUID)
    st, hdrs, body = wado(live, transferSyntax=stored, **ids)
    assert st == 200 and hdrs["Content-Type"] == "application/dicom"
    assert body == data[J2K]                                # byte-identical as stored
    st, _, body = wado(live, **ids)                         # default: explicit VR LE
    ds = pydicom.dcmread(io.BytesIO(body))
    assert st == 200 and ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.SOPInstanceUID == j2k.SOPInstanceUID and len(ds.PixelData) > 0
    st, _, body = wado(live, transferSyntax="1.2.840.10008.1.2.4.50", **ids)
    assert st == 406 and b"transferSyntax" in body


def test_bad_requests_are_4xx_with_a_reason(live, data):
    assert wado(live, requestType="XYZ")[0] == 400
    assert wado(live, objectUID=None)[0] == 400
    assert wado(live, objectUID="1.2.abc")[0] == 400
    assert wado(live, contentType="text/html")[0] == 406
    assert wado(live, windowCenter="40")[0] == 400           # without windowWidth
    assert wado(live, rows="-3")[0] == 400
    st, _, body = wado(live, anonymize="yes")
    assert st == 400 and b"anonymize" in body
    assert wado(live, region="0.1,0.1,0.5,0.5")[0] == 400
    assert wado(live, objectUID="1.2.3.4.5.6")[0] == 404      # staff may learn it is missing


def test_access_like_wado_rs(live, data):
    # anonymous: one answer for an existing and a made-up instance
    assert wado(live, auth=False)[0] == 401
    assert wado(live, auth=False, objectUID="1.2.3.4.5.6")[0] == 401
    query = urllib.parse.urlencode({"requestType": "WADO", "studyUID": STUDY_A,
                                    "seriesUID": SERIES_A, "objectUID": SOPS_A[0]})
    # a share of another exam does not open this one
    token, code, _ = create_share(live, STUDY_B, include_images=True)
    other, r = open_share(live, token, code)
    assert r.ok, r.text
    assert other.get(f"{live.url}/wado?{query}", timeout=30).status_code == 404
    # the share of this exam does, until its images are switched off; staff still see them
    token, code, _ = create_share(live, STUDY_A, include_images=True)
    s, r = open_share(live, token, code)
    assert r.ok, r.text
    assert s.get(f"{live.url}/wado?{query}", timeout=30).status_code == 200
    with write_transaction():
        exam = Exam.get(Exam.study_uid == STUDY_A)
        exam.images_enabled = False
        exam.save()
    live.ctx.renders.forget_exam(exam.id)
    assert s.get(f"{live.url}/wado?{query}&contentType=application/dicom",
                 timeout=30).status_code == 403
    assert wado(live)[0] == 200
