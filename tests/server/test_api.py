"""The first HTTP surface on a real socket: /healthz, /api/studies, /api/studies/{uid}."""
import json

import pytest

from adapters.importer import Importer
from tests.dicom_factory import ct_bytes

pytestmark = pytest.mark.db


@pytest.fixture
def filled(catalog, tmp_path):
    for i, (pid, mod, date) in enumerate([("P1", "CT", "20260312"), ("P1", "CT", "20261020"),
                                          ("P2", "US", "20260601")]):
        (tmp_path / f"{i}.dcm").write_bytes(ct_bytes(
            patient_id=pid, modality=mod, study_date=date, accession=f"ACC{i}",
            name="张^伟" if pid == "P1" else "李^秀英", charset="ISO_IR 192",
            study_uid=f"1.2.40.{i}"))
    Importer(catalog).run([tmp_path])


def test_healthz(live):
    status, body = live.json("/healthz")
    assert status == 200
    assert body["ok"] and body["alive"] and body["version"]
    status, body = live.json("/readyz")
    assert status == 200
    assert body["ok"] and body["database"] == "ok" and body["storage"] == "ok"


def test_readyz_reports_unwritable_storage(live, ctx, monkeypatch):
    monkeypatch.setattr(ctx.storage, "writable", lambda: False)
    status, body = live.json("/readyz")
    assert status == 503 and body["storage"] == "not writable" and not body["ok"]
    assert live.json("/healthz")[0] == 200          # liveness: the process answers


def test_study_list_and_filters(live, filled):
    status, body = live.json("/api/studies")
    assert status == 200 and body["total"] == 3
    assert body["studies"][0]["patient"]["name"] == "张伟"
    assert live.json("/api/studies?patient_id=P1")[1]["total"] == 2
    assert live.json("/api/studies?category=ultrasound")[1]["total"] == 1
    assert live.json("/api/studies?name=%E7%A7%80")[1]["total"] == 1      # 秀
    assert live.json("/api/studies?date_from=2026-06-01&date_to=2026-12-31")[1]["total"] == 2
    assert live.json("/api/studies?accession=ACC0")[1]["studies"][0]["exam_date"] == "2026-03-12"
    _, hdrs, _ = live.get("/api/studies")
    assert hdrs["Cache-Control"] == "no-store"
    assert hdrs["X-Content-Type-Options"] == "nosniff"


def test_study_detail(live, filled):
    status, body = live.json("/api/studies/1.2.40.0")
    assert status == 200
    assert body["series"][0]["num_instances"] == 1
    assert body["series"][0]["instances"][0]["rows"] == 16


@pytest.mark.parametrize("path,status,needle", [
    ("/api/studies?page=0", 400, "page"),
    ("/api/studies?page=abc", 400, "whole number"),
    ("/api/studies?per_page=100000", 400, "per_page"),
    ("/api/studies?category=xray", 400, "category"),
    ("/api/studies?date_from=yesterday", 400, "date_from"),
    ("/api/studies?name=" + "x" * 100, 400, "name"),
    ("/api/studies/1.2.3.999", 404, "no exam"),
    ("/api/studies/1.2..3", 400, "not a valid DICOM UID"),
    ("/api/nothing-here", 404, "no such"),
    ("/api/studies/%27%20OR%201=1", 404, "no such"),
])
def test_bad_input_gets_one_json_error_shape(live, filled, path, status, needle):
    got, hdrs, raw = live.get(path)
    assert got == status
    body = json.loads(raw)
    assert body["ok"] is False and body["status"] == status
    assert needle in body["error"]
    assert "Traceback" not in raw.decode()


def test_access_log_masks_share_tokens_and_queries(live, caplog):
    import logging
    with caplog.at_level(logging.INFO, logger="tornado.access"):
        live.get("/s/abcdefghijklmnopqrstuvwxyz123456?code=123456", auth=False)
        live.get("/api/studies?name=%E5%BC%A0")
    text = caplog.text
    assert "abcdefghijklmnop" not in text and "/s/***" in text
    assert "123456" not in text and "name=" not in text
