"""make_report_pdf: Chinese text extractable, CJK font embedded, glyphs rendered."""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pytest

from adapters.cjk_font import find_cjk_font
from adapters.pdf_report import ReportDataError, age_text, make_report_pdf

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

REPORT = {
    "patient_name": "张伟",
    "sex": "M",
    "birth_date": "19680514",
    "patient_id": "DF100231",
    "accession_number": "CT2610200042",
    "exam_date": "20261020",
    "modality": "CT",
    "exam_item": "胸部+全腹部CT平扫 (Chest/Abdomen)",
    "department": "呼吸内科",
    "referring_physician": "林海",
    "findings": "右肺上叶前段见一实性结节，大小约7.8mm×6.9mm，边缘见浅分叶，CT值约36HU。\n"
    "肝右叶见一类圆形低密度灶，直径约12mm，边界清。",
    "impression": "1. 右肺上叶前段实性结节，较前增大，建议胸外科会诊。\n2. 肝右叶小囊肿。",
    "author": "陈志强",
    "reviewer": "刘卫东",
    "signed_at": dt.datetime(2026, 10, 20, 13, 37),
}


def _text(pdf: bytes) -> str:
    doc = pdfium.PdfDocument(pdf)
    return "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))


def test_find_cjk_font_returns_a_font_file():
    path, index = find_cjk_font()
    assert path.is_file() and index >= 0
    assert path.read_bytes()[:4] in (b"ttcf", b"\x00\x01\x00\x00", b"OTTO", b"true")


def test_report_text_is_extractable_and_complete():
    pdf = make_report_pdf(REPORT)
    assert pdf.startswith(b"%PDF-")
    text = _text(pdf).replace("\r", "")
    squashed = re.sub(r"\s+", "", text)
    for needle in ("中山市东凤人民医院", "CT检查报告单", "张伟", "男", "58岁", "DF100231", "CT2610200042",
                   "2026-10-20", "检查所见", "诊断意见", "7.8mm×6.9mm", "右肺上叶前段实性结节", "肝右叶小囊肿",
                   "报告医生", "陈志强", "审核医生", "刘卫东", "2026-10-2013:37", "本报告仅供临床参考",
                   "第1页/共1页", "呼吸内科", "Chest/Abdomen"):
        assert needle in squashed, needle


def test_font_is_embedded_as_subset_truetype():
    pdf = make_report_pdf(REPORT)
    assert b"/FontFile2" in pdf
    assert re.search(rb"/BaseFont\s*/[A-Z]{6}\+", pdf), "font is not a subset"
    # the embedded font program is small (a subset of a ~5 MB collection)
    assert len(pdf) < 400_000


def test_glyphs_render_not_boxes():
    pdf = make_report_pdf(REPORT)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    image = pdfium.PdfDocument(pdf)[0].render(scale=2).to_pil()
    image.save(ARTIFACTS / "report_ct.png")
    grey = np.asarray(image.convert("L"))
    # the hospital name line: ink present, and structured (boxes would be hollow rectangles of similar ink)
    title = grey[60:140, :]
    ink = (title < 128).mean()
    assert 0.01 < ink < 0.5


def test_long_findings_flow_onto_second_page_with_page_numbers():
    long = dict(REPORT, findings="\n".join([REPORT["findings"]] * 25))
    pdf = make_report_pdf(long)
    doc = pdfium.PdfDocument(pdf)
    assert len(doc) == 2
    squashed = re.sub(r"\s+", "", _text(pdf))
    assert "第1页/共2页" in squashed and "第2页/共2页" in squashed
    assert squashed.count("本报告仅供临床参考") == 2


def test_output_is_deterministic():
    assert make_report_pdf(REPORT) == make_report_pdf(REPORT)


def test_pathology_headings_and_images():
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (220, 120, 180)).save(buf, "JPEG")
    pdf = make_report_pdf(dict(REPORT, modality="SM", findings_heading="镜下所见：", impression_heading="病理诊断：",
                               images=[buf.getvalue()] * 3))
    squashed = re.sub(r"\s+", "", _text(pdf))
    assert "病理诊断报告单" in squashed and "镜下所见" in squashed and "病理诊断：" in squashed
    assert b"/Subtype /Image" in pdf


def test_missing_required_key_names_it():
    bad = dict(REPORT)
    del bad["impression"]
    with pytest.raises(ReportDataError, match="impression"):
        make_report_pdf(bad)


@pytest.mark.parametrize(
    "born, on, expected",
    [("19680514", "20261020", "58岁"), ("19680514", "20260513", "57岁"), (dt.date(2025, 3, 1), dt.date(2026, 1, 5), "10月")],
)
def test_age_text(born, on, expected):
    assert age_text(born, on) == expected
