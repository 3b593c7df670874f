"""Saved measurements (issue 18): /api/measurements for their author only, validation, and
the export as a DICOM Comprehensive SR (TID 1500) stored with the exam as a new series."""
from __future__ import annotations

import io
import json

import pydicom
import pytest

from adapters.importer import Importer
from tests.conftest import staff_token
from tests.dicom_factory import ct_bytes

pytestmark = pytest.mark.db

STUDY, SERIES = "1.2.826.0.1.3680043.10.1373.77.1", "1.2.826.0.1.3680043.10.1373.77.2"
SOP1, SOP2 = "1.2.826.0.1.3680043.10.1373.77.3.1", "1.2.826.0.1.3680043.10.1373.77.3.2"
OTHER_STUDY, OTHER_SERIES = "1.2.826.0.1.3680043.10.1373.78.1", "1.2.826.0.1.3680043.10.1373.78.2"
OTHER_SOP = "1.2.826.0.1.3680043.10.1373.78.3"


@pytest.fixture
def exam(catalog, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, sop in enumerate((SOP1, SOP2)):
        (src / f"{i}.dcm").write_bytes(ct_bytes(
            study_uid=STUDY, series_uid=SERIES, sop_uid=sop, z=float(i), size=64,
            name="张^伟", charset="ISO_IR 192", patient_id="MP1", accession="MACC1"))
    (src / "o.dcm").write_bytes(ct_bytes(study_uid=OTHER_STUDY, series_uid=OTHER_SERIES,
                                         sop_uid=OTHER_SOP, patient_id="MP2", size=64,
                                         accession="MACC2"))
    Importer(catalog).run([src])
    return STUDY


def length(**kw) -> dict:
    m = {"study_uid": STUDY, "series_uid": SERIES, "sop_uid": SOP1, "frame": 1,
         "kind": "length", "points": [[10.5, 20.0], [40.0, 60.25]], "text": "",
         "values": {"length_mm": 34.6512345, "unit": ""}}
    m.update(kw)
    return m


def call(live, method, path, body=None, token=None, headers=None):
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    st, _h, raw = live.request(method, path, body, headers=h, auth=not headers)
    return st, json.loads(raw or b"{}")


def count_rows() -> int:
    from models.schema import Measurement
    return Measurement.select().count()


def test_owner_creates_lists_edits_deletes(live, exam):
    st, out = call(live, "POST", "/api/measurements", length())
    assert st == 201 and out["ok"], out
    m = out["measurement"]
    assert m["kind"] == "length" and m["points"] == [[10.5, 20.0], [40.0, 60.25]]
    assert m["values"] == {"length_mm": 34.6512345, "unit": ""} and m["frame"] == 1
    assert set(m) == {"id", "study_uid", "series_uid", "sop_uid", "frame", "kind", "points",
                      "text", "values"}
    roi = {"study_uid": STUDY, "series_uid": SERIES, "sop_uid": SOP2, "frame": 1,
           "kind": "ellipse", "points": [[0, 0], [64, 32]], "text": "囊肿 cyst",
           "values": {"mean": 12.5, "sd": 3.25, "min": -4, "max": 30, "area_mm2": 788.5,
                      "n": 1608, "unit": "HU"}}      # as the viewer sends them
    st, out2 = call(live, "POST", "/api/measurements", roi)
    assert st == 201
    st, listed = call(live, "GET", f"/api/measurements?study_uid={STUDY}")
    assert st == 200 and [x["id"] for x in listed["measurements"]] == [m["id"],
                                                                       out2["measurement"]["id"]]
    assert listed["measurements"][1]["text"] == "囊肿 cyst"
    # edit: other points and a note, moved to the other image of the same exam
    st, out = call(live, "PUT", f"/api/measurements/{m['id']}",
                   length(sop_uid=SOP2, points=[[1, 2], [3, 4]], text="note",
                          values={"length_mm": 1.98}))
    assert st == 200 and out["measurement"]["sop_uid"] == SOP2
    assert out["measurement"]["points"] == [[1.0, 2.0], [3.0, 4.0]]
    assert out["measurement"]["values"] == {"length_mm": 1.98, "unit": ""}
    st, out = call(live, "DELETE", f"/api/measurements/{m['id']}")
    assert st == 200 and out == {"ok": True}
    st, listed = call(live, "GET", f"/api/measurements?study_uid={STUDY}")
    assert [x["kind"] for x in listed["measurements"]] == ["ellipse"]
    assert call(live, "DELETE", f"/api/measurements/{m['id']}")[0] == 404


def test_another_doctor_neither_sees_nor_changes_them(live, exam):
    st, out = call(live, "POST", "/api/measurements", length())
    mid = out["measurement"]["id"]
    other = staff_token("doctor2", ("doctor",))
    st, listed = call(live, "GET", f"/api/measurements?study_uid={STUDY}", token=other)
    assert st == 200 and listed["measurements"] == []
    assert call(live, "PUT", f"/api/measurements/{mid}", length(text="x"), token=other)[0] == 403
    assert call(live, "DELETE", f"/api/measurements/{mid}", token=other)[0] == 403
    assert call(live, "POST", f"/api/measurements/sr?study_uid={STUDY}", token=other)[0] == 400
    st, listed = call(live, "GET", f"/api/measurements?study_uid={STUDY}")
    assert listed["measurements"][0]["text"] == ""          # unchanged


def test_front_desk_and_share_visitor_are_refused(live, exam, ctx):
    from models import shares
    from models.catalog import find_exam
    desk = staff_token("desk1", ("frontdesk",))
    assert call(live, "GET", f"/api/measurements?study_uid={STUDY}", token=desk)[0] == 403
    new = shares.create_share(find_exam(STUDY), key=ctx.secret_key, auditor=ctx.auditor)
    opened = shares.open_share(new.token, new.code, key=ctx.secret_key, auditor=ctx.auditor,
                               ip="10.0.0.7", ip_limit=0)
    h = {"Cookie": f"cf_session={opened.session.token}",
         "X-CSRF-Token": opened.session.session.csrf_token}
    assert call(live, "GET", f"/api/measurements?study_uid={STUDY}", headers=h)[0] == 403
    assert call(live, "POST", "/api/measurements", length(), headers=h)[0] == 403
    assert call(live, "POST", f"/api/measurements/sr?study_uid={STUDY}", headers=h)[0] == 403
    assert count_rows() == 0
    assert live.request("GET", f"/api/measurements?study_uid={STUDY}", auth=False)[0] == 401


@pytest.mark.parametrize("change, word", [
    ({"kind": "circle"}, "kind"),
    ({"points": [[1, 2]]}, "2 points"),
    ({"kind": "angle"}, "3 points"),
    ({"kind": "cobb", "points": [[1, 1], [2, 2], [3, 3]]}, "4 points"),
    ({"points": [[1, 2], [3, "4"]]}, "finite"),
    ({"points": [[1, 2], [3, True]]}, "finite"),
    ({"points": [[1, 2], [65, 4]]}, "outside"),            # 64 columns
    ({"points": [[1, 2], [3, -0.5]]}, "outside"),
    ({"points": [[1, 2], 3]}, "[x, y]"),
    ({"frame": 2}, "frames"),
    ({"frame": 0}, "frame"),
    ({"text": "x" * 501}, "500"),
    ({"values": {"length_mm": "1"}}, "finite"),
    ({"values": {"volume": 1}}, "unknown"),
    ({"values": {"unit": "mSv"}}, "unit"),
    ({"sop_uid": OTHER_SOP, "series_uid": OTHER_SERIES}, "not part of the exam"),
    ({"sop_uid": "1.2.3.999"}, "not part of the exam"),
    ({"sop_uid": "abc"}, "valid DICOM UID"),
    ({"study_uid": None}, "study_uid"),
])
def test_bad_input_is_400_and_stores_nothing(live, exam, change, word):
    st, out = call(live, "POST", "/api/measurements", length(**change))
    assert st == 400, out
    assert word in out["error"] and " / " in out["error"]        # bilingual
    assert count_rows() == 0


def test_nan_and_limits(live, exam, monkeypatch):
    st, _h, raw = live.request("POST", "/api/measurements",
                               json.dumps(length()).replace("34.6512345", "NaN").encode())
    assert st == 400 and "finite" in json.loads(raw)["error"] and count_rows() == 0
    st, out = call(live, "POST", "/api/measurements", length())
    mid = out["measurement"]["id"]
    # an edit cannot move it to another exam
    st, out = call(live, "PUT", f"/api/measurements/{mid}",
                   length(study_uid=OTHER_STUDY, series_uid=OTHER_SERIES, sop_uid=OTHER_SOP))
    assert st == 400 and "another exam" in out["error"]
    from models import measurements
    monkeypatch.setattr(measurements, "MAX_PER_EXAM", 2)
    assert call(live, "POST", "/api/measurements", length())[0] == 201
    st, out = call(live, "POST", "/api/measurements", length())
    assert st == 400 and "at most 2" in out["error"] and count_rows() == 2


def walk(items):
    for it in items:
        yield it
        yield from walk(it.get("ContentSequence", []))


def concept(it) -> str:
    return it.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in it else ""


def test_sr_export(live, exam, ctx):
    call(live, "POST", "/api/measurements", length(text="右肺结节"))
    call(live, "POST", "/api/measurements", {
        "study_uid": STUDY, "series_uid": SERIES, "sop_uid": SOP2, "frame": 1,
        "kind": "ellipse", "points": [[10, 10], [30, 20]],
        "values": {"mean": 40.5, "sd": 2.5, "min": 35, "max": 47, "area_mm2": 76.97,
                   "unit": "HU"}})
    call(live, "POST", "/api/measurements", {
        "study_uid": STUDY, "series_uid": SERIES, "sop_uid": SOP1, "kind": "cobb",
        "points": [[1, 1], [9, 3], [1, 20], [9, 15]], "values": {"angle_deg": 32.5}})
    call(live, "POST", "/api/measurements", {
        "study_uid": STUDY, "series_uid": SERIES, "sop_uid": SOP1, "kind": "arrow",
        "points": [[5, 5], [15, 15]], "text": "see here"})
    st, out = call(live, "POST", f"/api/measurements/sr?study_uid={STUDY}")
    assert st == 201 and out["ok"] and out["count"] == 4, out
    # read back the stored file
    from models.catalog import exam_instances, find_exam
    inst = exam_instances(find_exam(STUDY), out["series_uid"])
    assert [i.sop_uid for i in inst] == [out["sop_uid"]]
    ds = pydicom.dcmread(io.BytesIO(ctx.catalog.storage.read(inst[0].file_path)))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and ds.Modality == "SR"
    assert ds.StudyInstanceUID == STUDY and ds.PatientID == "MP1"
    assert str(ds.PatientName) == "张^伟" and ds.AccessionNumber == "MACC1"
    assert ds.ConceptNameCodeSequence[0].CodeValue == "126000"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    top = {concept(it): it for it in ds.ContentSequence}
    assert {"121049", "121008", "121058", "111028", "126010"} <= set(top)
    assert str(top["121008"].PersonName) == "doctor1"
    lib = [it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
           for it in walk(top["111028"].ContentSequence) if it.ValueType == "IMAGE"]
    assert sorted(lib) == sorted([SOP1, SOP2])
    groups = list(top["126010"].ContentSequence)
    assert [concept(g) for g in groups] == ["125007"] * 4
    nums = [{concept(it): (float(it.MeasuredValueSequence[0].NumericValue),
                           it.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue)
             for it in g.ContentSequence if it.ValueType == "NUM"} for g in groups]
    assert nums[0] == {"410668003": (34.6512345, "mm")}
    assert nums[1] == {"373098007": (40.5, "[hnsf'U]"), "386136009": (2.5, "[hnsf'U]"),
                       "255605001": (35.0, "[hnsf'U]"), "56851009": (47.0, "[hnsf'U]"),
                       "42798000": (76.97, "mm2")}
    assert nums[2] == {"285285000": (32.5, "deg")}
    assert nums[3] == {}
    # each value is inferred from its outline on the right image
    length_num = next(it for it in groups[0].ContentSequence if it.ValueType == "NUM")
    sc = length_num.ContentSequence[0]
    assert sc.RelationshipType == "INFERRED FROM" and sc.GraphicType == "POLYLINE"
    assert [float(v) for v in sc.GraphicData] == [10.5, 20.0, 40.0, 60.25]
    ref = sc.ContentSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == SOP1 and ref.ReferencedSOPClassUID == \
        "1.2.840.10008.5.1.4.1.1.2"
    ell = next(it for it in walk(groups[1].ContentSequence) if it.ValueType == "SCOORD")
    assert ell.GraphicType == "ELLIPSE"
    assert [float(v) for v in ell.GraphicData] == [10, 15, 30, 15, 20, 10, 20, 20]
    assert ell.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == SOP2
    texts = [it.TextValue for g in groups for it in g.ContentSequence
             if it.ValueType == "TEXT" and concept(it) == "121106"]
    assert texts == ["右肺结节", "see here"]
    region = [it for it in groups[3].ContentSequence if it.ValueType == "SCOORD"]
    assert len(region) == 1 and concept(region[0]) == "111030"
    tracking = [it.TextValue for g in groups for it in g.ContentSequence
                if concept(it) == "112039"]
    assert len(set(tracking)) == 4
    # the new series is listed with the exam as a document, not as pictures (no thumbnail
    # that cannot render); the export is audited without patient data
    st, study = live.json(f"/api/studies/{STUDY}")
    assert out["series_uid"] not in [s["series_uid"] for s in study["series"]]
    assert [s["series_uid"] for s in study["series"]] == [SERIES]
    sr_series = next(s for s in study["documents"] if s["series_uid"] == out["series_uid"])
    assert sr_series["modality"] == "SR" and sr_series["series_number"] == 2
    from models.schema import AuditEvent
    ev = AuditEvent.get(AuditEvent.action == "exam.measurements_sr")
    assert ev.actor_id == "doctor1" and f"series={out['series_uid']}" in ev.detail
    assert "张" not in ev.detail and "MP1" not in ev.detail
    # the rest of the exam's routes take the SR in their stride: the ZIP (with its DICOMDIR)
    # carries it, an image route refuses it with 4xx, the exam's thumbnail is an image's
    import zipfile
    st, _h, raw = live.get(f"/api/download/studies/{STUDY}.zip")
    assert st == 200
    names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
    assert "DICOMDIR" in names and len([n for n in names if n != "DICOMDIR"]) == 3
    st = live.get(f"/dicomweb/studies/{STUDY}/series/{out['series_uid']}/instances/"
                  f"{out['sop_uid']}/rendered")[0]
    assert 400 <= st < 500
    assert live.get(f"/dicomweb/studies/{STUDY}/thumbnail")[0] == 200
    # a second export is a second SR series (each export a record of its time)
    st, again = call(live, "POST", f"/api/measurements/sr?study_uid={STUDY}")
    assert st == 201 and again["series_uid"] != out["series_uid"]
    st, study = live.json(f"/api/studies/{STUDY}")
    assert sum(s["modality"] == "SR" for s in study["documents"]) == 2


def test_sr_export_needs_measurements(live, exam):
    st, out = call(live, "POST", f"/api/measurements/sr?study_uid={STUDY}")
    assert st == 400 and "no saved measurements" in out["error"]
    assert call(live, "POST", "/api/measurements/sr?study_uid=abc")[0] == 400
    assert call(live, "POST", "/api/measurements/sr?study_uid=1.2.3.4")[0] == 404
