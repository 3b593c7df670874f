"""Chinese diagnostic report as an A4 PDF (fpdf2, CJK font embedded as a subset).

One public function, :func:`make_report_pdf`. The output is deterministic for a
given input (the PDF creation date is the report's signing time), so a demo
generated twice yields the same bytes.
"""
from __future__ import annotations

import datetime as dt
import io
import logging
import re
import unicodedata
from typing import Any, Iterable

from fpdf import FPDF
from fpdf.enums import TextMode, XPos, YPos

from adapters.cjk_font import find_cjk_font

log = logging.getLogger(__name__)

DEFAULT_HOSPITAL = "中山市东凤人民医院"
FOOTER_NOTE = "本报告仅供临床参考"
FONT_FAMILY = "cjk"

_SEX_ZH = {"M": "男", "F": "女", "O": "其他", "男": "男", "女": "女"}
_MODALITY_TITLE = {
    "CT": "CT检查报告单",
    "MR": "磁共振(MR)检查报告单",
    "DX": "X线(DR)检查报告单",
    "CR": "X线(CR)检查报告单",
    "US": "超声检查报告单",
    "ES": "内镜检查报告单",
    "SM": "病理诊断报告单",
}
_MODALITY_ZH = {
    "CT": "CT",
    "MR": "MR 磁共振",
    "DX": "DX 数字X线",
    "CR": "CR 计算机X线",
    "US": "US 超声",
    "ES": "ES 内镜",
    "SM": "SM 病理切片",
}

# Punctuation that must not start a line (simple Chinese kinsoku rule).
_NO_LINE_START = set("，。、；：？！）》」』】’”%,.;:?!)]}")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.,:%/+\-~×±°()]*|\s+|.", re.S)


class ReportDataError(ValueError):
    """The report dict is missing a required key or holds an unusable value."""


# --------------------------------------------------------------------------- helpers
def _fmt_date(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d")
    if isinstance(value, dt.date):
        return value.isoformat()
    text = str(value)
    if re.fullmatch(r"\d{8}", text):  # DICOM DA
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def _fmt_datetime(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return _fmt_date(value)


def _as_date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        digits = value.replace("-", "")
        if re.fullmatch(r"\d{8}", digits):
            return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    return None


def age_text(birth_date: Any, on: Any) -> str:
    """Chinese age string (``"57岁"``, ``"8月"``) of someone born on ``birth_date`` at ``on``."""
    born, when = _as_date(birth_date), _as_date(on)
    if born is None or when is None:
        return ""
    months = (when.year - born.year) * 12 + (when.month - born.month) - (when.day < born.day)
    if months < 0:
        return ""
    return f"{months // 12}岁" if months >= 24 else f"{months}月"


def _char_width_ok(ch: str) -> bool:
    return unicodedata.category(ch)[0] != "C" or ch in "\n\t"


def wrap_text(pdf: FPDF, text: str, width: float) -> list[str]:
    """Break ``text`` into lines no wider than ``width`` (current font).

    Chinese may break between any two characters; runs of Latin letters and
    digits (``CT``, ``5.2mm``, ``HP(+)``) stay whole; closing punctuation never
    starts a line.
    """
    lines: list[str] = []
    for paragraph in text.replace("\r\n", "\n").split("\n"):
        paragraph = "".join(ch for ch in paragraph if _char_width_ok(ch))
        line = ""
        for token in _TOKEN.findall(paragraph):
            if not line and token.isspace():
                continue
            candidate = line + token
            if pdf.get_string_width(candidate) <= width or not line:
                line = candidate
                continue
            if token[0] in _NO_LINE_START:
                line = candidate  # hang the punctuation in the margin
                continue
            lines.append(line.rstrip())
            line = "" if token.isspace() else token
            while pdf.get_string_width(line) > width and len(line) > 1:
                # a single Latin run wider than the line: split it by characters
                cut = len(line)
                while cut > 1 and pdf.get_string_width(line[:cut]) > width:
                    cut -= 1
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line.rstrip())
    return lines


# --------------------------------------------------------------------------- document
class _ReportPDF(FPDF):
    def __init__(self, hospital: str, title: str) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.hospital = hospital
        self.report_title = title
        self.set_margins(18, 15, 18)
        self.set_auto_page_break(auto=True, margin=22)
        path, index = find_cjk_font()
        self.add_font(FONT_FAMILY, "", str(path), collection_font_number=index)
        self.alias_nb_pages("{nb}")

    def bold_cell(self, *args: Any, **kwargs: Any) -> None:
        """``cell`` in fake bold (fill + thin stroke): the CJK font has no bold face.

        Inside ``local_context`` (q/Q) because the text render mode is graphics
        state that would otherwise leak into every later text object.
        """
        with self.local_context(text_mode=TextMode.FILL_STROKE, line_width=0.18):
            self.cell(*args, **kwargs)

    def header(self) -> None:
        self.set_font(FONT_FAMILY, size=18)
        self.bold_cell(0, 9, self.hospital, align="C", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_font(FONT_FAMILY, size=15)
        self.bold_cell(0, 9, self.report_title, align="C", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_line_width(0.5)
        y = self.get_y() + 1
        self.line(self.l_margin, y, self.w - self.r_margin, y)
        self.set_y(y + 2)

    def footer(self) -> None:
        self.set_y(-17)
        self.set_line_width(0.2)
        self.line(self.l_margin, self.get_y(), self.w - self.r_margin, self.get_y())
        self.set_font(FONT_FAMILY, size=9)
        self.set_text_color(90, 90, 90)
        self.cell(0, 6, FOOTER_NOTE, align="L")
        self.set_x(self.l_margin)
        self.cell(0, 6, f"第 {self.page_no()} 页 / 共 {{nb}} 页", align="R")
        self.set_text_color(0, 0, 0)


def _required(report: dict, key: str) -> Any:
    value = report.get(key)
    if value is None or value == "":
        raise ReportDataError(f"report key {key!r} is missing or empty; make_report_pdf needs it")
    return value


def _info_grid(pdf: _ReportPDF, rows: Iterable[tuple[tuple[str, str], ...]]) -> None:
    usable = pdf.w - pdf.l_margin - pdf.r_margin
    pdf.set_font(FONT_FAMILY, size=10.5)
    for row in rows:
        col = usable / len(row)
        for label, value in row:
            label_w = pdf.get_string_width(label + "：") + 1
            pdf.set_text_color(80, 80, 80)
            pdf.cell(label_w, 7, label + "：")
            pdf.set_text_color(0, 0, 0)
            shown = value
            while shown and pdf.get_string_width(shown) > col - label_w - 1:
                shown = shown[:-1]
            pdf.cell(col - label_w, 7, shown)
        pdf.ln(7)


def _section(pdf: _ReportPDF, heading: str, text: str) -> None:
    usable = pdf.w - pdf.l_margin - pdf.r_margin
    pdf.ln(2)
    pdf.set_font(FONT_FAMILY, size=12)
    pdf.bold_cell(0, 8, heading, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(FONT_FAMILY, size=11)
    indent = 7.0
    for line in wrap_text(pdf, text, usable - indent):
        pdf.set_x(pdf.l_margin + indent)
        pdf.cell(usable - indent, 6.4, line, new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _images(pdf: _ReportPDF, images: list[bytes]) -> None:
    """A row (or rows) of up to 4 pictures per row, e.g. endoscopy key images."""
    usable = pdf.w - pdf.l_margin - pdf.r_margin
    per_row = min(4, len(images))
    gap = 3.0
    w = (usable - gap * (per_row - 1)) / per_row
    h = w * 3 / 4
    pdf.ln(2)
    for i, data in enumerate(images):
        col = i % per_row
        if col == 0:
            if pdf.get_y() + h > pdf.page_break_trigger:
                pdf.add_page()
            y = pdf.get_y()
        pdf.image(io.BytesIO(data), x=pdf.l_margin + col * (w + gap), y=y, w=w, h=h)
        if col == per_row - 1 or i == len(images) - 1:
            pdf.set_y(y + h + gap)


def make_report_pdf(report: dict) -> bytes:
    """Render a Simplified-Chinese diagnostic report as A4 PDF bytes.

    Keys of ``report`` (``*`` = required):

    - ``hospital``: hospital name, default ``"中山市东凤人民医院"``
    - ``title``: e.g. ``"CT检查报告单"``; default derived from ``modality``
    - ``patient_name`` *: patient's name, e.g. ``"张伟"``
    - ``sex``: ``"M"``/``"F"``/``"O"`` (DICOM) or ``"男"``/``"女"``
    - ``age``: text such as ``"57岁"``; if absent computed from ``birth_date``
      (date or ``YYYYMMDD``/``YYYY-MM-DD``) at ``exam_date``
    - ``patient_id`` *: hospital patient ID (登记号)
    - ``accession_number`` *: 检查号
    - ``exam_date``: date, datetime or ``YYYYMMDD`` string
    - ``modality``: DICOM modality (``CT``, ``MR``, ``US``, ``ES``, ``SM``, ``DX``, ``CR`` …)
    - ``exam_item``: exam item / study description, e.g. ``"胸部+全腹部CT平扫"``
    - ``department``: requesting department (申请科室), optional
    - ``referring_physician``: requesting doctor (申请医生), optional
    - ``findings`` *: 检查所见, free text; ``\\n`` starts a new paragraph
    - ``impression`` *: 诊断意见, free text
    - ``author``: reporting doctor (报告医生)
    - ``reviewer``: reviewing doctor (审核医生)
    - ``signed_at``: report time (datetime or text); also the PDF creation date
    - ``images``: optional list of JPEG/PNG bytes shown under the findings
      (endoscopy/pathology key images), four per row
    - ``findings_heading`` / ``impression_heading``: override the section titles
      (default ``"检查所见："`` / ``"诊断意见："``; pathology uses ``"镜下所见："`` /
      ``"病理诊断："``)

    Long text flows onto a second page; page numbers and the footer
    ``"本报告仅供临床参考"`` are on every page.
    """
    findings = str(_required(report, "findings"))
    impression = str(_required(report, "impression"))
    patient_name = str(_required(report, "patient_name"))
    patient_id = str(_required(report, "patient_id"))
    accession = str(_required(report, "accession_number"))
    modality = str(report.get("modality") or "").upper()
    hospital = str(report.get("hospital") or DEFAULT_HOSPITAL)
    title = str(report.get("title") or _MODALITY_TITLE.get(modality, "医学影像检查报告单"))
    age = str(report.get("age") or age_text(report.get("birth_date"), report.get("exam_date")))
    sex = _SEX_ZH.get(str(report.get("sex") or "").upper() or "", str(report.get("sex") or ""))
    signed_at = report.get("signed_at")

    pdf = _ReportPDF(hospital, title)
    pdf.set_title(f"{title} {accession}")
    pdf.set_author(hospital)
    pdf.set_creator("CloudFilm")
    pdf.set_lang("zh-CN")
    if isinstance(signed_at, dt.datetime):
        when = signed_at if signed_at.tzinfo else signed_at.replace(tzinfo=dt.timezone(dt.timedelta(hours=8)))
        pdf.set_creation_date(when)
    pdf.add_page()

    _info_grid(
        pdf,
        (
            (("姓名", patient_name), ("性别", sex), ("年龄", age)),
            (("登记号", patient_id), ("检查号", accession), ("检查日期", _fmt_date(report.get("exam_date")))),
            (
                ("检查类型", _MODALITY_ZH.get(modality, modality)),
                ("申请科室", str(report.get("department") or "")),
                ("申请医生", str(report.get("referring_physician") or "")),
            ),
            (("检查项目", str(report.get("exam_item") or "")),),
        ),
    )
    pdf.set_line_width(0.2)
    pdf.line(pdf.l_margin, pdf.get_y() + 1, pdf.w - pdf.r_margin, pdf.get_y() + 1)
    pdf.ln(2)

    _section(pdf, str(report.get("findings_heading") or "检查所见："), findings)
    images = report.get("images") or []
    if images:
        _images(pdf, list(images))
    _section(pdf, str(report.get("impression_heading") or "诊断意见："), impression)

    # signature block, kept together at the bottom of the last page when it fits
    block_h = 16
    if pdf.get_y() + block_h > pdf.page_break_trigger:
        pdf.add_page()
    pdf.set_y(max(pdf.get_y() + 6, pdf.page_break_trigger - block_h))
    pdf.set_line_width(0.2)
    pdf.line(pdf.l_margin, pdf.get_y(), pdf.w - pdf.r_margin, pdf.get_y())
    pdf.ln(2)
    _info_grid(
        pdf,
        (
            (
                ("报告医生", str(report.get("author") or "")),
                ("审核医生", str(report.get("reviewer") or "")),
                ("报告时间", _fmt_datetime(signed_at)),
            ),
        ),
    )
    data = bytes(pdf.output())
    log.debug("report PDF for accession %s: %d pages, %d bytes", accession, pdf.pages_count, len(data))
    return data
