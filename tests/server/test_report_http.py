import io

import pytest
from PIL import Image

from adapters.importer import Importer
from models.schema import Exam
from tests.dicom_factory import ct_bytes

pytestmark = pytest.mark.db


@pytest.fixture
def reported(catalog, tmp_path):
    from adapters.pdf_report import make_report_pdf
    (tmp_path / "a.dcm").write_bytes(ct_bytes(study_uid="1.2.60.1", accession="R1"))
    Importer(catalog).run([tmp_path])
    pdf = make_report_pdf({"patient_name": "张伟", "patient_id": "P1", "accession_number": "R1",
                           "findings": "双肺纹理清晰。", "impression": "未见明显异常。",
                           "modality": "CT"})
    catalog.store_report(Exam.get(), findings="双肺纹理清晰。", impression="未见明显异常。",
                         pdf=pdf)
    return pdf


def test_pdf_is_served_byte_exact(live, reported):
    st, hdrs, body = live.get("/api/studies/1.2.60.1/report.pdf?download=1")
    assert st == 200 and body == reported
    assert hdrs["Content-Type"] == "application/pdf"
    assert hdrs["Content-Disposition"].startswith("attachment")


def test_pages_render_as_images(live, reported):
    st, body = live.json("/api/studies/1.2.60.1/report/pages")
    assert st == 200 and body["pages"] == 1
    st, hdrs, png = live.get("/api/studies/1.2.60.1/report/pages/1?width=600")
    assert st == 200 and hdrs["Content-Type"] == "image/png"
    im = Image.open(io.BytesIO(png))
    assert im.width == 600 and im.height > 800
    assert live.get("/api/studies/1.2.60.1/report/pages/2")[0] == 404
    assert live.get("/api/studies/1.2.60.1/report/pages/1?width=5")[0] == 400


def test_missing_report(live, catalog, tmp_path):
    (tmp_path / "b.dcm").write_bytes(ct_bytes(study_uid="1.2.61.1"))
    Importer(catalog).run([tmp_path])
    st, _, raw = live.get("/api/studies/1.2.61.1/report.pdf")
    assert st == 404 and "no report" in raw.decode()
    assert live.get("/api/studies/1.2.99.1/report.pdf")[0] == 404
