"""One list policy: the staff search, a doctor's patient history, the portal's and WeChat's
exam list and QIDO-RS list the same exams for the same sessions (server/policy.py
exam_scope / visible_exams); a share visitor's QIDO shows only the shared exam; images
switched off hide series, instances and frames from patients, never the study."""
from __future__ import annotations

import pytest
import requests

from models.db import write_transaction
from models.schema import Exam, Patient
from tests.wechat.conftest import api, arrive_from_menu, fake, phone_session, wlive  # noqa: F401

from .conftest import A, B, create_share, open_share, staff, verify

pytestmark = pytest.mark.db


def qido(live, sess=None, headers=None, path="/dicomweb/studies"):
    r = (sess or requests).get(live.url + path, headers=headers or {}, timeout=30)
    if r.status_code == 204:
        return set()
    assert r.status_code == 200, r.text
    return {d["0020000D"]["Value"][0] for d in r.json()}


def _report_only_exam(catalog):
    """An order of patient A without images (no Study UID): listed by the portal only, so
    the comparisons below use the exams that have a Study UID."""
    with write_transaction():
        p = Patient.get(Patient.patient_id == A.patient_id)
        Exam.create(patient=p, accession_number="ACC-A0", modality="CT", status="ordered")


def _uids(exams):
    return {e["study_uid"] for e in exams if e["study_uid"]}


def test_staff_lists_match_qido(wlive, people, catalog):
    _report_only_exam(catalog)
    for roles, name in ((("doctor",), "dr_list"), (("frontdesk",), "desk")):
        h = staff(wlive, roles, name)
        everything = qido(wlive, headers=h)
        assert everything == {A.study_uid, B.study_uid}
        r = requests.get(wlive.url + "/api/studies?per_page=500", headers=h, timeout=30)
        assert r.status_code == 200 and _uids(r.json()["studies"]) == everything
    h = staff(wlive, ("doctor",), "dr_list")
    for person in (A, B):
        r = requests.get(f"{wlive.url}/api/staff/patients/{person.patient_id}/exams",
                         headers=h, timeout=30)
        assert r.status_code == 200
        assert _uids(r.json()["exams"]) == qido(
            wlive, headers=h, path=f"/dicomweb/studies?PatientID={person.patient_id}")
    # admins list nothing, in any of them
    h = staff(wlive, ("sysadmin",), "admin")
    assert requests.get(wlive.url + "/dicomweb/studies", headers=h, timeout=30).status_code \
        in (401, 403)
    assert requests.get(wlive.url + "/api/studies", headers=h, timeout=30).status_code \
        in (401, 403)


def test_patient_portal_and_wechat_lists_match_qido(wlive, people, catalog):
    _report_only_exam(catalog)
    s, r = verify(wlive, phone=A.phone, id_number=A.id_number)
    assert r.ok, r.text
    me = s.get(wlive.url + "/api/patient/me", timeout=30).json()
    assert _uids(me["exams"]) == qido(wlive, s) == {A.study_uid}
    assert len(me["exams"]) == 2             # the report-only order is still listed
    # the WeChat user bound to patient B: the WeChat page's list is /api/patient/me
    sess = phone_session()
    arrive_from_menu(wlive, sess)
    wme = api(wlive, sess, "GET", "/api/wechat/me").json()
    r = api(wlive, sess, "POST", "/api/wechat/bind",
            {"phone": B.phone, "id_number": B.id_number}, csrf=wme["csrf_token"])
    assert r.status_code == 200, r.text
    pm = api(wlive, sess, "GET", "/api/patient/me").json()
    assert _uids(pm["exams"]) == qido(wlive, sess) == {B.study_uid}
    # neither may use the staff search
    assert s.get(wlive.url + "/api/studies", timeout=30).status_code in (401, 403)
    assert api(wlive, sess, "GET", "/api/studies").status_code in (401, 403)


def test_share_visitor_sees_only_the_shared_exam(wlive, people):
    token, code, _ = create_share(wlive, A.study_uid, include_images=True)
    s, r = open_share(wlive, token, code)
    assert r.ok, r.text
    assert qido(wlive, s) == {A.study_uid}
    assert qido(wlive, s, path=f"/dicomweb/studies?PatientID={B.patient_id}") == set()
    r = s.get(f"{wlive.url}/dicomweb/studies/{B.study_uid}/series", timeout=30)
    assert r.status_code == 404
    # a share visitor has no portal list and no staff search
    assert s.get(wlive.url + "/api/patient/me", timeout=30).status_code == 403
    assert s.get(wlive.url + "/api/studies", timeout=30).status_code in (401, 403)


def test_images_off_hide_instances_and_frames_from_patients(wlive, people):
    s, r = verify(wlive, phone=A.phone, id_number=A.id_number)
    assert r.ok
    base = f"{wlive.url}/dicomweb/studies/{A.study_uid}"
    inst = f"{base}/series/{A.series_uid}/instances"
    frame = f"{inst}/{A.sop_uids[0]}/frames/1"
    assert s.get(inst, timeout=30).status_code == 200
    assert s.get(frame, timeout=30).status_code == 200
    with write_transaction():
        Exam.update(images_enabled=False).where(Exam.study_uid == A.study_uid).execute()
    wlive.ctx.principals.clear()
    assert qido(wlive, s) == {A.study_uid}                       # the study stays listed
    assert s.get(wlive.url + "/dicomweb/instances", timeout=30).status_code == 204
    assert s.get(f"{base}/series", timeout=30).status_code == 204
    assert s.get(inst, timeout=30).status_code == 204
    assert s.get(frame, timeout=30).status_code == 403
    assert s.get(f"{inst}/{A.sop_uids[0]}", timeout=30).status_code == 403
    me = s.get(wlive.url + "/api/patient/me", timeout=30).json()
    assert _uids(me["exams"]) == {A.study_uid} and me["exams"][0]["images_enabled"] is False
    # staff still see them
    h = staff(wlive, ("doctor",), "dr_list")
    assert requests.get(frame, headers=h, timeout=30).status_code == 200


def test_model_lists_take_the_scope(people, catalog):
    """The list functions honour the scope they are given (the handlers pass
    policy.exam_scope): an empty scope lists nothing, a patient's scope only their exams."""
    from models.qido import Scope
    from models.shares import patient_overview
    from models.staff import patient_history
    a = Patient.get(Patient.patient_id == A.patient_id)
    none, only_a = Scope(), Scope(patients=(a.id,))
    assert patient_overview(a.id, mask_phone=str, scope=none)["exams"] == []
    assert len(patient_overview(a.id, mask_phone=str, scope=only_a)["exams"]) == 1
    assert patient_history(B.patient_id, only_a)["exams"] == []
    assert catalog.find_studies(scope=none)["studies"] == []
    assert _uids(catalog.find_studies(scope=only_a)["studies"]) == {A.study_uid}
    assert len(catalog.find_studies(scope=Scope(all=True))["studies"]) == 2
