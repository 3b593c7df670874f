"""Real HL7 v2 text for the tests and the benchmark: ADT, ORM, OMI, ORU with a PDF, in
UTF-8 and GB18030, with Chinese names. A helper builds any of them with a control ID."""
from __future__ import annotations

import base64

def _id_number() -> str:
    from models.catalog import id_number_check_digit
    first = "44200019900307123"
    return first + id_number_check_digit(first)


def msh(ctrl: str, mtype: str, charset: str = "UNICODE UTF-8") -> str:
    return (f"MSH|^~\\&|HIS|ZSDFRMYY|CLOUDFILM|ZSDFRMYY|20260312101500||{mtype}|{ctrl}|P|2.5"
            f"||||||{charset}")


def adt(ctrl: str, pid: str = "P1001", name: str = "张^伟", trigger: str = "A01",
        phone: str = "13800138000", charset: str = "UNICODE UTF-8") -> str:
    return "\r".join([
        msh(ctrl, f"ADT^{trigger}^ADT_{trigger}", charset),
        f"EVN|{trigger}|20260312101500",
        f"PID|1||{pid}^^^ZSDFRMYY^PI||{name}||19800307|M|||中山市东凤镇^^中山^广东||"
        f"{phone}||||||{_id_number()}",
        "PV1|1|O",
    ]) + "\r"


def a40(ctrl: str, surviving: str, old: str) -> str:
    return "\r".join([msh(ctrl, "ADT^A40^ADT_A39"), "EVN|A40|20260312101500",
                      f"PID|1||{surviving}^^^ZSDFRMYY^PI||王^芳||19750101|F",
                      f"MRG|{old}^^^ZSDFRMYY^PI"]) + "\r"


def orm(ctrl: str, acc: str, pid: str = "P1001", control: str = "NW", status: str = "",
        modality: str = "CT", study_uid: str = "", name: str = "张^伟",
        charset: str = "UNICODE UTF-8") -> str:
    segs = [msh(ctrl, "ORM^O01^ORM_O01", charset),
            f"PID|1||{pid}^^^ZSDFRMYY^PI||{name}||19800307|M",
            f"ORC|{control}|{acc}|{acc}||{status}||^^^20260312101500",
            f"OBR|1|{acc}|{acc}|CTCHEST^胸部CT平扫|||20260312101500||||||||||||{acc}||||||"
            f"{modality}"]
    if study_uid:
        segs.append(f"ZDS|{study_uid}^100^Application^DICOM")
    return "\r".join(segs) + "\r"


def omi(ctrl: str, acc: str, study_uid: str, pid: str = "P1001") -> str:
    return "\r".join([
        msh(ctrl, "OMI^O23^OMI_O23"), f"PID|1||{pid}^^^ZSDFRMYY^PI||张^伟||19800307|M",
        f"ORC|NW|{acc}|{acc}||SC", f"TQ1|||||||20260313090000",
        f"OBR|1|{acc}|{acc}|MRHEAD^头颅MR",
        f"IPC|{acc}|RP1|{study_uid}|SPS1|MR"]) + "\r"


def oru(ctrl: str, acc: str, pdf: bytes | None = None, status: str = "F",
        pid: str = "P1001", findings: str = "双肺纹理清晰，未见明显实质性病变。",
        impression: str = "胸部CT平扫未见明显异常。", charset: str = "UNICODE UTF-8",
        pdf_field: str | None = None) -> str:
    segs = [msh(ctrl, "ORU^R01^ORU_R01", charset),
            f"PID|1||{pid}^^^ZSDFRMYY^PI||张^伟||19800307|M",
            f"OBR|1|{acc}|{acc}|CTCHEST^胸部CT平扫|||20260312101500||||||||||||{acc}|||"
            f"20260312113000|||{status}|||||||D001&李&明|D002&陈&静",
            f"OBX|1|TX|18782-3^Radiology Study observation (findings)^LN||{findings}||||||{status}",
            f"OBX|2|TX|19005-8^Radiology Impression^LN||{impression}||||||{status}"]
    if pdf is not None or pdf_field is not None:
        data = pdf_field if pdf_field is not None else \
            "^Application^PDF^Base64^" + base64.b64encode(pdf).decode()
        segs.append(f"OBX|3|ED|PDF^Report PDF||{data}||||||{status}")
    return "\r".join(segs) + "\r"


def report_pdf(acc: str = "CT001") -> bytes:
    from adapters.pdf_report import make_report_pdf
    return make_report_pdf({
        "hospital": "中山市东凤人民医院", "title": "CT检查报告单", "patient_name": "张伟",
        "sex": "M", "age": "46岁", "patient_id": "P1001", "accession_number": acc,
        "modality": "CT", "exam_item": "胸部CT平扫", "exam_date": "2026-03-12",
        "findings": "双肺纹理清晰，未见明显实质性病变。", "impression": "胸部CT平扫未见明显异常。",
        "author": "李明", "reviewer": "陈静", "signed_at": "2026-03-12 11:30"})


def frame(text: str, encoding: str = "utf-8") -> bytes:
    return b"\x0b" + text.encode(encoding) + b"\x1c\r"
