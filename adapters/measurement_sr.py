"""A doctor's saved measurements of an exam as a DICOM Structured Report (issue 18):
Comprehensive SR (1.2.840.10008.5.1.4.1.1.88.33) following TID 1500 "Measurement Report".

    CONTAINER (126000, DCM) Imaging Measurement Report          [TID 1500]
      HAS CONCEPT MOD  CODE  Language of Content Item and Descendants = English (US)
      HAS OBS CONTEXT  PNAME Person Observer Name = the doctor (display name or user name)
      HAS CONCEPT MOD  CODE  Procedure reported = Imaging procedure (363679005, SCT)
      CONTAINS CONTAINER Image Library (111028) > Image Library Group (126200) > IMAGE ...
      CONTAINS CONTAINER Imaging Measurements (126010)
        CONTAINS CONTAINER Measurement Group (125007), one per measurement   [TID 1501]
          HAS OBS CONTEXT TEXT    Tracking Identifier (112039) = "CloudFilm measurement <id>"
          HAS OBS CONTEXT UIDREF  Tracking Unique Identifier (112040)
          CONTAINS NUM  Length / Area / Mean / SD / Minimum / Maximum / Angle / Cobb angle
            INFERRED FROM SCOORD  POLYLINE / ELLIPSE / POINT (image pixel coordinates)
              SELECTED FROM IMAGE  the measured image (and frame of a multi-frame image)
          CONTAINS SCOORD Image Region (111030)     (arrows, notes: no value to infer)
          CONTAINS TEXT  Comment (121106)           (the note, when there is one)

The patient and study attributes are copied from a stored image of the exam; the SR is a new
series (Modality SR) stored through the import path (adapters/import_api.py store_dicom), so
indexing, versions and every other rule of a received file apply. Each export is a new
series: a report of what was measured then, never rewritten.
"""
from __future__ import annotations

import io

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from models import measurements as store
from models.clock import utcnow

from .dicom_meta import extract_meta

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
UCUM = {"mm": "millimeter", "mm2": "square millimeter", "[hnsf'U]": "Hounsfield unit",
        "deg": "degree", "1": "no units"}
# value key -> (code value, scheme, meaning, unit or None: the measurement's pixel unit)
NUMS = {
    "length_mm": ("410668003", "SCT", "Length", "mm"),
    "area_mm2": ("42798000", "SCT", "Area", "mm2"),
    "mean": ("373098007", "SCT", "Mean", None),
    "sd": ("386136009", "SCT", "Standard Deviation", None),
    "min": ("255605001", "SCT", "Minimum", None),
    "max": ("56851009", "SCT", "Maximum", None),
    "angle_deg": ("1483009", "SCT", "Angle", "deg"),
}
COBB = ("285285000", "SCT", "Cobb angle")
COPIED = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
          "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
          "AccessionNumber", "StudyDescription")
OPTIONAL = ("IssuerOfPatientID", "StudyDescription")


def code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def item(rel: str | None, vtype: str, concept: tuple, **attrs) -> Dataset:
    ds = Dataset()
    if rel:
        ds.RelationshipType = rel
    ds.ValueType = vtype
    ds.ConceptNameCodeSequence = [code(*concept)]
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def container(rel: str | None, concept: tuple, children: list) -> Dataset:
    ds = item(rel, "CONTAINER", concept, ContinuityOfContent="SEPARATE")
    ds.ContentSequence = Sequence(children)
    return ds


def image_ref(img: dict, sop_uid: str, frame: int | None) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = img["sop_class_uid"]
    ref.ReferencedSOPInstanceUID = sop_uid
    if frame is not None and img.get("frames", 1) > 1:
        ref.ReferencedFrameNumber = frame
    return ref


def scoords(m: dict, img: dict, rel: str, concept: tuple | None = None) -> list[Dataset]:
    """The measurement's outline as SCOORD items (image pixel coordinates, column\\row),
    each SELECTED FROM its image."""
    pts, kind = m["points"], m["kind"]
    if kind == "rect":
        (x0, y0), (x1, y1) = pts
        shape = ("POLYLINE", [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
    elif kind == "ellipse":
        (x0, y0), (x1, y1) = pts
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2
        major = [[cx - rx, cy], [cx + rx, cy]]
        minor = [[cx, cy - ry], [cx, cy + ry]]
        shape = ("ELLIPSE", major + minor if rx >= ry else minor + major)
    elif kind == "text":
        shape = ("POINT", pts)
    else:                                      # length, arrow, angle, cobb
        shape = ("POLYLINE", pts)
    sc = item(rel, "SCOORD", concept or ("111030", "DCM", "Image Region"),
              GraphicType=shape[0],
              GraphicData=[float(v) for p in shape[1] for v in p])
    if concept is None:
        del sc.ConceptNameCodeSequence         # INFERRED FROM by value: no concept name
    sel = Dataset()
    sel.RelationshipType, sel.ValueType = "SELECTED FROM", "IMAGE"
    sel.ReferencedSOPSequence = [image_ref(img, m["sop_uid"], m["frame"])]
    sc.ContentSequence = Sequence([sel])
    return [sc]


def num(concept: tuple, value: float, unit: str, m: dict, img: dict) -> Dataset:
    mv = Dataset()
    mv.NumericValue = format_number_as_ds(float(value))     # at most 16 characters
    mv.MeasurementUnitsCodeSequence = [code(unit, "UCUM", UCUM[unit])]
    n = item("CONTAINS", "NUM", concept, MeasuredValueSequence=[mv])
    n.ContentSequence = Sequence(scoords(m, img, "INFERRED FROM"))
    return n


def group(m: dict, img: dict, study_uid: str) -> Dataset:
    children = [
        item("HAS OBS CONTEXT", "TEXT", ("112039", "DCM", "Tracking Identifier"),
             TextValue=f"CloudFilm measurement {m['id']}"),
        item("HAS OBS CONTEXT", "UIDREF", ("112040", "DCM", "Tracking Unique Identifier"),
             UID=generate_uid(entropy_srcs=["cloudfilm-measurement", study_uid,
                                            str(m["id"])])),
    ]
    values, pixel_unit = m["values"], "[hnsf'U]" if m["values"].get("unit") == "HU" else "1"
    for key, (cv, scheme, meaning, unit) in NUMS.items():
        if values.get(key) is None:
            continue
        concept = COBB if key == "angle_deg" and m["kind"] == "cobb" else (cv, scheme, meaning)
        children.append(num(concept, values[key], unit or pixel_unit, m, img))
    if len(children) == 2:                     # nothing measured: the drawing itself
        children += scoords(m, img, "CONTAINS", ("111030", "DCM", "Image Region"))
    if m["text"]:
        children.append(item("CONTAINS", "TEXT", ("121106", "DCM", "Comment"),
                             TextValue=m["text"]))
    return container("CONTAINS", ("125007", "DCM", "Measurement Group"), children)


def library(images: dict) -> Dataset:
    entries = []
    for sop, img in sorted(images.items()):
        e = Dataset()
        e.RelationshipType, e.ValueType = "CONTAINS", "IMAGE"
        e.ReferencedSOPSequence = [image_ref(img, sop, None)]
        entries.append(e)
    return container("CONTAINS", ("111028", "DCM", "Image Library"), [
        container("CONTAINS", ("126200", "DCM", "Image Library Group"), entries)])


def evidence(study_uid: str, images: dict) -> list[Dataset]:
    by_series: dict[str, list] = {}
    for sop, img in sorted(images.items()):
        by_series.setdefault(img["series_uid"], []).append(image_ref(img, sop, None))
    st = Dataset()
    st.StudyInstanceUID = study_uid
    st.ReferencedSeriesSequence = []
    for se_uid, refs in by_series.items():
        se = Dataset()
        se.SeriesInstanceUID = se_uid
        se.ReferencedSOPSequence = refs
        st.ReferencedSeriesSequence.append(se)
    return [st]


def content(src: dict, ms: list[dict]) -> list[Dataset]:
    images = src["images"]
    return [
        item("HAS CONCEPT MOD", "CODE",
             ("121049", "DCM", "Language of Content Item and Descendants"),
             ConceptCodeSequence=[code("en-US", "RFC5646", "English (United States)")]),
        item("HAS OBS CONTEXT", "PNAME", ("121008", "DCM", "Person Observer Name"),
             PersonName=src["observer"][:64]),
        item("HAS CONCEPT MOD", "CODE", ("121058", "DCM", "Procedure reported"),
             ConceptCodeSequence=[code("363679005", "SCT", "Imaging procedure")]),
        library({m["sop_uid"]: images[m["sop_uid"]] for m in ms}),
        container("CONTAINS", ("126010", "DCM", "Imaging Measurements"),
                  [group(m, images[m["sop_uid"]], src["study_uid"]) for m in ms]),
    ]


def build_sr(src: dict, template: Dataset) -> tuple[bytes, str, str, int]:
    """(file bytes, series UID, SOP UID, measurement count) of the SR of `src`
    (models/measurements.py sr_source), patient and study copied from `template`."""
    ms = [m for m in src["measurements"] if m["sop_uid"] in src["images"]]
    if not ms:
        raise store.MeasurementError("测量所在的图像已不在此检查中 / the measured images are "
                                     "no longer part of this exam")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"           # UTF-8: Chinese names and notes
    for kw in COPIED:                                 # Type 2 ones present even if empty
        v = template.get(kw)
        if v not in (None, "") or kw not in OPTIONAL:
            setattr(ds, kw, "" if v is None else str(v))  # a name keeps every group
    now = utcnow()
    sop_uid, series_uid = generate_uid(), generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = COMPREHENSIVE_SR, sop_uid
    ds.Modality, ds.SeriesInstanceUID = "SR", series_uid
    ds.SeriesNumber, ds.InstanceNumber = src["series_number"], 1
    ds.SeriesDescription = "Measurements / 测量"
    ds.Manufacturer = "CloudFilm"
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.CurrentRequestedProcedureEvidenceSequence = evidence(src["study_uid"], src["images"])
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [code("126000", "DCM", "Imaging Measurement Report")]
    ds.ContinuityOfContent = "SEPARATE"
    tpl = Dataset()
    tpl.MappingResource, tpl.TemplateIdentifier = "DCMR", "1500"
    ds.ContentTemplateSequence = [tpl]
    ds.ContentSequence = Sequence(content(src, ms))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = COMPREHENSIVE_SR
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), series_uid, sop_uid, len(ms)


def export_sr(catalog, exam, user_id: int, origin: str) -> dict:
    """Build the user's SR of the exam and store it with the exam (runs in the db pool):
    {series_uid, sop_uid, count}."""
    from .import_api import store_dicom
    src = store.sr_source(exam, user_id)
    _meta, template = extract_meta(catalog.storage.read(src["template_path"]))
    data, series_uid, sop_uid, count = build_sr(src, template)
    store_dicom(catalog, data, origin, "api")
    return {"series_uid": series_uid, "sop_uid": sop_uid, "count": count}
