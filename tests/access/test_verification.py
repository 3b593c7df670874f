"""Identity verification: SMS code (HTTP gateway, faked), national ID, phone, accession,
combinations switched at run time, caps, messages; the patient portal API."""
import datetime as dt

import pytest
import requests

from models.schema import AuditEvent, utcnow
from models.shares import SmsCode
from tests.access.conftest import create_share, staff, verify

pytestmark = pytest.mark.db


def admin(live):
    return staff(live, ("sysadmin",), "sysadm")


def set_methods(live, methods, combinations):
    return requests.put(live.url + "/api/admin/verification",
                        json={"methods": methods, "combinations": combinations},
                        headers=admin(live), timeout=30)


def test_sms_code_through_the_hospital_gateway(live, people, sms):
    a, _ = people
    r = requests.post(live.url + "/api/verify/sms", json={"phone": a.phone})
    assert r.status_code == 200 and r.json()["retry_after_s"] == 60
    assert sms.requests[-1]["phone"] == a.phone
    assert sms.headers[-1]["Authorization"] == "Bearer sms-secret"
    code = sms.code_for(a.phone)
    row = SmsCode.select().order_by(SmsCode.id.desc()).first()
    assert code not in row.code_hash and a.phone not in row.phone_hash
    # resend within 60 s is refused
    r = requests.post(live.url + "/api/verify/sms", json={"phone": a.phone})
    assert r.status_code == 429 and "秒后" in r.json()["error"]
    s, r = verify(live, phone=a.phone, sms_code=code)
    assert r.status_code == 200, r.text
    me = s.get(live.url + "/api/patient/me").json()
    assert me["patient"]["phone"] == "138****8001"
    assert me["patient"]["id_number"].startswith("4420") and "*" in me["patient"]["id_number"]
    assert [e["study_uid"] for e in me["exams"]] == [a.study_uid]
    assert me["freshly_verified"] is True
    # single use
    _, r = verify(live, phone=a.phone, sms_code=code)
    assert r.status_code == 403 and "失效" in r.json()["error"]


def test_unknown_phone_gets_the_same_answer_and_no_sms(live, people, sms):
    r = requests.post(live.url + "/api/verify/sms", json={"phone": "13700000000"})
    assert r.status_code == 200 and "如该手机号" in r.json()["message"]
    assert sms.requests == []


def test_five_wrong_sms_codes_void_it(live, people, sms):
    a, _ = people
    requests.post(live.url + "/api/verify/sms", json={"phone": a.phone})
    code = sms.code_for(a.phone)
    wrong = "000000" if code != "000000" else "111111"
    for i in range(5):
        _, r = verify(live, phone=a.phone, sms_code=wrong)
        assert r.status_code == 403
    assert "作废" in r.json()["error"]
    _, r = verify(live, phone=a.phone, sms_code=code)
    assert r.status_code == 403


def test_sms_code_expires_after_5_minutes(live, people, sms):
    a, _ = people
    requests.post(live.url + "/api/verify/sms", json={"phone": a.phone})
    code = sms.code_for(a.phone)
    SmsCode.update(expires_at=utcnow() - dt.timedelta(seconds=1)).execute()
    _, r = verify(live, phone=a.phone, sms_code=code)
    assert r.status_code == 403 and "失效" in r.json()["error"]


def test_sms_caps_per_phone_and_per_ip(live, people, sms):
    a, b = people
    day = live.ctx.config.sms_per_phone_day
    for _ in range(day):
        SmsCode.create(phone_hash=__import__("models.shares", fromlist=["x"]).phone_hash(
            live.ctx.secret_key, a.phone), code_hash="x", ip="10.9.9.9",
            created_at=utcnow() - dt.timedelta(hours=2), expires_at=utcnow())
    r = requests.post(live.url + "/api/verify/sms", json={"phone": a.phone})
    assert r.status_code == 429 and "上限" in r.json()["error"]
    for _ in range(live.ctx.config.sms_per_ip_hour):
        SmsCode.create(phone_hash="y", code_hash="x", ip="127.0.0.1",
                       created_at=utcnow() - dt.timedelta(minutes=5), expires_at=utcnow())
    r = requests.post(live.url + "/api/verify/sms", json={"phone": b.phone})
    assert r.status_code == 429 and "尝试次数过多" in r.json()["error"]


def test_id_number_and_phone(live, people):
    a, b = people
    s, r = verify(live, phone=a.phone, id_number=a.id_number.lower())
    assert r.status_code == 200
    assert s.get(live.url + f"/api/studies/{a.study_uid}").status_code == 200
    # mixing two patients' data: one generic message, nothing about who exists
    _, r = verify(live, phone=a.phone, id_number=b.id_number)
    assert r.status_code == 403 and r.json()["error"].startswith("身份信息不匹配")
    _, r2 = verify(live, phone="13311112222", id_number=b.id_number)
    assert r2.json()["error"] == r.json()["error"]
    assert AuditEvent.select().where((AuditEvent.action == "verify")
                                     & (AuditEvent.outcome == "fail")).count() == 2


def test_malformed_input_is_refused_with_the_reason(live, people):
    a, _ = people
    for body, word in (({"phone": "12345", "id_number": a.id_number}, "11"),
                       ({"phone": a.phone, "id_number": "44200019800101123"}, "18"),
                       ({"phone": a.phone, "id_number": a.id_number[:17] + "0"
                         if a.id_number[17] != "0" else a.id_number[:17] + "1"}, "校验位"),
                       ({"phone": a.phone, "sms_code": "12"}, "6位"),
                       ({"phone": a.phone}, "请按以下方式之一验证")):
        _, r = verify(live, **body)
        assert r.status_code == 400 and word in r.json()["error"], (body, r.text)


def test_accession_combinations(live, people):
    a, _ = people
    _, r = verify(live, accession=a.accession)
    assert r.status_code == 400                      # never the accession alone
    s, r = verify(live, accession=a.accession, phone=a.phone)
    assert r.status_code == 200
    _, r = verify(live, accession="NOPE", phone=a.phone)
    assert r.status_code == 403


def test_methods_switch_at_run_time(live, people):
    a, _ = people
    # without verification.manage: refused
    r = requests.put(live.url + "/api/admin/verification", json={}, headers=staff(live))
    assert r.status_code == 403
    r = requests.get(live.url + "/api/admin/verification", headers=admin(live))
    assert r.status_code == 200 and r.json()["methods"]["sms"] is True
    r = set_methods(live, {"sms": True, "id_number": False, "phone": False, "accession": False},
                    [["sms"], ["id_number", "phone"]])
    assert r.status_code == 200
    m = requests.get(live.url + "/api/verify/methods").json()
    assert m["methods"] == ["sms"] and m["combinations"] == [["sms"]]
    _, r = verify(live, phone=a.phone, id_number=a.id_number)    # next request: off
    assert r.status_code == 400 and "停用" in r.json()["error"]
    # refuse switching everything off, or leaving no usable combination
    for methods, combos in (({"sms": False, "id_number": False, "phone": False,
                              "accession": False}, [["sms"]]),
                            ({"sms": False, "id_number": True, "phone": False,
                              "accession": False}, [["id_number", "phone"]]),
                            ({"sms": True}, [["accession"]]), ({"fax": True}, [["sms"]])):
        r = set_methods(live, methods, combos)
        assert r.status_code == 400, (methods, combos)
    assert requests.get(live.url + "/api/verify/methods").json()["methods"] == ["sms"]
    r = set_methods(live, {"sms": True, "id_number": True, "phone": True, "accession": False},
                    [["id_number", "phone"]])
    assert r.status_code == 200
    _, r = verify(live, phone=a.phone, id_number=a.id_number)
    assert r.status_code == 200
    assert AuditEvent.select().where(AuditEvent.action == "verification.settings").count() == 2


def test_patient_portal_shares_and_revoke(live, people):
    a, b = people
    s, _ = verify(live, phone=a.phone, id_number=a.id_number)
    r = s.post(live.url + "/api/patient/shares", json={"study_uid": a.study_uid,
                                                        "max_opens": 2})
    assert r.status_code == 201
    token, code = r.json()["url"].rsplit("/", 1)[1], r.json()["code"]
    # a patient cannot share someone else's exam
    r2 = s.post(live.url + "/api/patient/shares", json={"study_uid": b.study_uid})
    assert r2.status_code == 404
    v = requests.Session()
    assert v.post(live.url + "/api/share/open", json={"token": token, "code": code}).ok
    shares = s.get(live.url + "/api/patient/shares").json()["shares"]
    assert shares[0]["opens"] == 1 and shares[0]["max_opens"] == 2
    # B cannot revoke A's share
    sb, _ = verify(live, phone=b.phone, id_number=b.id_number)
    assert sb.post(live.url + f"/api/patient/shares/{shares[0]['id']}/revoke",
                   json={}).status_code == 404
    assert s.post(live.url + f"/api/patient/shares/{shares[0]['id']}/revoke",
                  json={}).status_code == 200
    assert v.get(live.url + f"/api/studies/{a.study_uid}").status_code == 401
    # staff see the patient's share too
    _, _, _ = create_share(live, a.study_uid)
    r = requests.get(live.url + f"/api/shares?study_uid={a.study_uid}", headers=staff(live))
    assert len(r.json()["shares"]) == 2
    # logout ends the session
    assert s.post(live.url + "/api/patient/logout", json={}).ok
    assert s.get(live.url + "/api/patient/me").status_code == 401


def test_patient_csrf_is_required(live, people):
    a, _ = people
    s, _ = verify(live, phone=a.phone, id_number=a.id_number)
    del s.headers["X-CSRF-Token"]
    r = s.post(live.url + "/api/patient/shares", json={"study_uid": a.study_uid})
    assert r.status_code == 403
