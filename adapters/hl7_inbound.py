"""Apply inbound HL7 v2 messages: ADT (patients, merge), ORM/OMI (orders), ORU (reports with
a PDF). One entry point, `Hl7Inbound.handle(raw_bytes) -> HandleResult`, which decodes,
applies exactly once (by MSH-10) and returns the ACK bytes to send back after the commit.

Field mapping: docs/hl7-mapping.md. Never logs names, ID numbers or phone numbers.
"""
from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass, field

from models.catalog import Catalog, same_patient
from models.db import connection_open, drop_connection, outage, unavailable
from models.peers import Gate, audit_refusal
from models.storage import valid_uid
from models.integration import (IntegrationError, ReportFields, Unsupported, apply_inbound,
                                file_report, find_exam, merge_patients, note_event,
                                record_failure, sent_by, upsert_order, upsert_patient)

from .hl7_codec import (CJK_RE, AckIssue, Hl7Error, Message, build_ack, decode_message, encode,
                        fallback_control_id, parse_date, parse_overrides, parse_ts,
                        person_name)

log = logging.getLogger(__name__)

CHANNEL = "hl7"
ADT_UPDATE = {"A01", "A04", "A05", "A08", "A28", "A31"}
FIELD_RE = re.compile(r"^(PID)-(\d{1,2})(?:\.(\d{1,2}))?$")
ACC_RE = re.compile(r"^(OBR|ORC|IPC)-(\d{1,2})(?:\.(\d{1,2}))?$")
ID_TYPES = {"ID", "NNCHN", "NI", "SS", "CZ"}
IMPRESSION_KEYS = ("19005-8", "IMP", "IMPRESSION", "诊断", "印象", "结论", "CONCLUSION")
RESULT_STATUS = {"P": "preliminary", "R": "preliminary", "I": "preliminary",
                 "S": "preliminary", "A": "preliminary", "F": "final", "C": "corrected",
                 "": "final"}


@dataclass
class Hl7Settings:
    id_number_field: str = "PID-19"
    phone_field: str = "PID-13"
    accession_field: str = "IPC-1"
    charset_fallback: str = "GB18030"
    charset_overrides: dict[str, str] = field(default_factory=dict)   # sender → codec
    receivers: list[str] = field(default_factory=list)
    app: str = "CLOUDFILM"

    @classmethod
    def from_config(cls, c) -> "Hl7Settings":
        return cls(id_number_field=c.hl7_id_number_field, phone_field=c.hl7_phone_field,
                   accession_field=c.hl7_accession_field,
                   charset_fallback=c.hl7_charset_fallback,
                   charset_overrides=parse_overrides(c.hl7_charset_overrides),
                   receivers=[r.strip() for r in c.hl7_receivers.split(",") if r.strip()],
                   app=c.dicom_ae_title or "CLOUDFILM")

    def check(self) -> None:
        for name, value, rx in (("hl7_id_number_field", self.id_number_field, FIELD_RE),
                                ("hl7_phone_field", self.phone_field, FIELD_RE),
                                ("hl7_accession_field", self.accession_field, ACC_RE)):
            if not rx.match(value):
                raise ValueError(f"setting {name}: {value!r} is not a field such as PID-19, "
                                 "PID-13.1 or OBR-18")


@dataclass
class HandleResult:
    outcome: str          # applied / duplicate / error / rejected
    ack: bytes
    control_id: str
    message_type: str
    reason: str = ""
    close: bool = False   # refused sender: the listener closes the connection after the ACK
    queued: bool = False  # applying it added outbox rows: the listener wakes the outbox worker


class _Every(dict):
    """decode_message overrides that name every sender: a peer's own character set."""

    def __init__(self, codec: str):
        super().__init__()
        self.codec = codec

    def __contains__(self, key) -> bool:
        return True

    def __getitem__(self, key) -> str:
        return self.codec

    def __len__(self) -> int:
        return 1


class Hl7Inbound:
    def __init__(self, catalog: Catalog, settings: Hl7Settings | None = None, *,
                 gate: Gate | None = None):
        self.catalog = catalog
        self.s = settings or Hl7Settings()
        self.s.check()
        self.gate = gate          # trusted peers (models/peers.py); None: every sender

    # entry point -----------------------------------------------------------------------
    def handle(self, raw: bytes, *, frame_error: str = "", refusal: str = "AE",
               peer: str | None = None) -> HandleResult:
        """Decode and apply one message; never raises for bad content. A frame the listener
        could not read (`frame_error`) is answered `refusal` (AE, or AR: do not resend).
        `peer` is the sender's address: with a gate, an unknown sender is answered AR and
        the connection closed, a message type the peer may not send is answered AR. A
        database that cannot be reached (or a commit that fails because it went away) is
        answered AE, temporary failure, retry: the transaction was rolled back, nothing of
        the message is applied, and the connection stays open. Any other failure is answered
        AE too (internal error), never by dropping the connection."""
        down = ("temporary failure: the database is unavailable; the message was not "
                "applied; retry later")
        for attempt in (0, 1):
            # the thread keeps its connection between messages: one that died while
            # idle (the server restarted) fails this message once, which is then tried
            # again on a fresh connection (a commit lost on the way is found applied
            # by its control ID and not applied twice)
            stale = connection_open()
            try:
                res = self._handle(raw, frame_error=frame_error, refusal=refusal,
                                   peer=peer)
                outage.ok()
                return res
            except Exception as exc:  # noqa: BLE001 - the sender always gets an answer
                if not unavailable(exc):
                    log.exception("HL7 message not processed")   # a fault: traceback
                    return self._failed(raw, "internal error: the message was not "
                                        "processed; retry later (the server log has "
                                        "the cause)")
                drop_connection()   # this thread's connection is dead: never reuse it
                if stale and attempt == 0:
                    continue
                outage.failed(exc)  # one log line per outage (models/db.py)
                return self._failed(raw, down)

    def _failed(self, raw: bytes, reason: str) -> HandleResult:
        """AE with an ERR saying why, for a message whose transaction did not commit (no
        record of it is written: the database may be what failed)."""
        msg, charset, codec = None, "", None
        try:
            dec = decode_message(raw, self.s.charset_fallback, self.s.charset_overrides)
            msg, charset, codec = Message(dec.text, dec.codec), dec.charset_name, dec.codec
        except Hl7Error:
            try:
                msg = Message(raw.decode("latin-1"))
            except Hl7Error:
                msg = None
        text = build_ack(msg, "AE", reason, app=self.s.app, charset=charset,
                         issues=[AckIssue("", reason, 207, "E")])
        ctrl = (msg.control_id if msg is not None else "") or fallback_control_id(raw)
        mtype = msg.message_type if msg is not None else ""
        ack = encode(text, charset, codec) if codec else encode(text, charset)
        return HandleResult("error", ack, ctrl, mtype, reason)

    def _handle(self, raw: bytes, *, frame_error: str, refusal: str,
                peer: str | None) -> HandleResult:
        adm = None
        if peer is not None and self.gate is not None:
            adm = self.gate.admit(peer)
            if not adm.allowed:
                return self._refused(raw, peer, adm.reason, close=True)
        msg = None
        charset = ""
        overrides = self.s.charset_overrides
        if adm is not None and adm.charset:       # a peer's charset comes first
            overrides = _Every(parse_overrides(f"PEER={adm.charset}")["PEER"])
        try:
            dec = decode_message(raw, self.s.charset_fallback, overrides)
            charset = dec.charset_name
            msg = Message(dec.text, dec.codec)
            if frame_error:
                raise Hl7Error(frame_error)
            if not msg.control_id:
                raise Hl7Error("MSH-10 (message control ID) is empty")
        except Hl7Error as exc:
            if msg is None:
                try:   # header only, to echo MSH-10 in the ACK
                    msg = Message(raw.decode("latin-1"))
                except Hl7Error:
                    msg = None
            return self._unreadable(raw, msg, str(exc), charset,
                                    refusal if frame_error else "AE")
        text = dec.text
        ctrl, mtype = msg.control_id, msg.message_type

        def ack(outcome: str, note: str, issues=()) -> str:
            code = {"applied": "AA", "error": "AE", "rejected": "AR"}[outcome]
            return build_ack(msg, code, note, app=self.s.app, charset=charset,
                             issues=[self._ack_issue(i) for i in issues])

        if adm is not None:
            adm = self.gate.admit(peer, what=_type_of(msg))
            if not adm.allowed:
                return self._refused(raw, peer, adm.reason, msg=msg, charset=charset,
                                     codec=dec.codec)
        with sent_by(adm.peer.name if adm is not None and adm.peer else "hl7",
                     adm.may_change_identity if adm is not None else True):
            res = apply_inbound(CHANNEL, ctrl, mtype, text, lambda: self._apply(msg), ack)
        if res.outcome in ("error", "rejected"):
            log.info("HL7 %s %s: %s (%s)", mtype, ctrl, res.outcome, res.reason[:200])
        return HandleResult(res.outcome, encode(res.ack, charset, dec.codec), ctrl, mtype,
                            res.reason, queued=res.queued)

    def _refused(self, raw: bytes, peer: str, reason: str, *, msg: Message | None = None,
                 charset: str = "", codec: str | None = None,
                 close: bool = False) -> HandleResult:
        """A sender or message type the peer table does not allow: AR with an ERR, audited
        (peer.refused: address, message type; never the content)."""
        if msg is None:
            try:
                msg = Message(raw.decode("latin-1"))
            except Hl7Error:
                msg = None
        mtype = _type_of(msg) if msg is not None else ""
        text = build_ack(msg, "AR", f"refused: {reason}", app=self.s.app, charset=charset,
                         issues=[AckIssue("MSH-4" if close else "MSH-9",
                                          f"refused: {reason}", 207, "E")])
        audit_refusal(getattr(self.catalog, "auditor", None), "hl7", peer,
                      message_type=mtype, reason=reason)
        note_event(CHANNEL, peer, "rejected", f"{mtype or 'message'} refused: {reason}")
        log.warning("HL7 from %s refused: %s (%s)", peer, reason, mtype)
        ctrl = (msg.control_id if msg is not None else "") or fallback_control_id(raw)
        ack = encode(text, charset, codec) if codec else encode(text, charset)
        return HandleResult("rejected", ack, ctrl, mtype, reason, close=close)

    def _ack_issue(self, issue) -> AckIssue:
        """A models.integration.Issue as an ERR segment: id_number / phone become the fields
        they came from (hl7_id_number_field, hl7_phone_field)."""
        where = {"id_number": self.s.id_number_field,
                 "phone": self.s.phone_field}.get(issue.where, issue.where)
        text = issue.text
        if issue.where in ("id_number", "phone"):
            text = f"{where} ({issue.where.replace('_', ' ')}): {text}"
        return AckIssue(where, text, issue.hl7_code, issue.severity)

    def _unreadable(self, raw: bytes, msg: Message | None, reason: str,
                    charset: str, code: str = "AE") -> HandleResult:
        ctrl = (msg.control_id if msg is not None else "") or fallback_control_id(raw)
        mtype = msg.message_type if msg is not None else ""
        text = build_ack(msg, code, reason, app=self.s.app, charset=charset,
                         issues=[AckIssue("", reason, 207 if code == "AR" else 102, "E")])
        outcome = "rejected" if code == "AR" else "error"
        record_failure(CHANNEL, ctrl, mtype, raw.decode("utf-8", errors="replace"), outcome,
                       reason, text)
        log.info("HL7 message %s not readable: %s", ctrl, reason[:200])
        return HandleResult(outcome, encode(text, charset), ctrl, mtype, reason)

    # dispatch --------------------------------------------------------------------------
    def _apply(self, msg: Message) -> str:
        t, trig = msg.get("MSH", 9, 1).upper(), msg.get("MSH", 9, 2).upper()
        if t == "ADT" and trig in ADT_UPDATE:
            p = upsert_patient(self.catalog, self.patient_fields(msg))
            return f"patient {p.patient_id} updated"
        if t == "ADT" and trig == "A40":
            mrg = msg.first("MRG")
            if mrg is None:
                raise IntegrationError("ADT^A40 without an MRG segment", where="MRG",
                                       hl7_code=100)
            old = msg.get(mrg, 1)
            p = merge_patients(self.catalog, self.patient_fields(msg), old)
            return f"patient {old} merged into {p.patient_id}"
        if (t, trig) in (("ORM", "O01"), ("OMI", "O23"), ("OMG", "O19")):
            return self._order(msg)
        if (t, trig) == ("ORU", "R01"):
            return self._result(msg)
        raise Unsupported(f"message type {msg.message_type or '(empty MSH-9)'} is not "
                          "supported: send ADT^A01/A04/A08/A40, ORM^O01, OMI^O23 or ORU^R01")

    # patients --------------------------------------------------------------------------
    def patient_fields(self, msg: Message) -> dict:
        pid = msg.first("PID")
        if pid is None:
            raise IntegrationError("PID segment missing", where="PID", hl7_code=100)
        reps = msg.reps(pid, 3)
        patient_id = ""
        for i, _ in enumerate(reps):
            if msg.get(pid, 3, 5, i).upper() not in ID_TYPES:
                patient_id = msg.get(pid, 3, 1, i)
                break
        if not patient_id:
            patient_id = msg.get(pid, 2) or (msg.get(pid, 3, 1, 0) if reps else "")
        if not patient_id:
            raise IntegrationError("PID-3 (patient identifier list) is empty", where="PID-3",
                                   hl7_code=101)
        f = {"patient_id": patient_id, "name": person_name(msg, pid, 5),
             "sex": {"M": "M", "F": "F", "O": "O"}.get(msg.get(pid, 8).upper()[:1], ""),
             "birth_date": None}
        bd = msg.get(pid, 7)
        if bd:
            f["birth_date"] = parse_date(bd)
            if f["birth_date"] is None:
                raise IntegrationError(f"PID-7 birth date {bd[:20]!r} is not a date "
                                       "(YYYYMMDD)", where="PID-7", hl7_code=102)
        f["id_number"] = self._id_number(msg, pid)
        f["phone"] = self._phone(msg, pid)
        return f

    def _id_number(self, msg: Message, pid) -> str:
        m = FIELD_RE.match(self.s.id_number_field)
        n, c = int(m.group(2)), int(m.group(3) or 1)
        if n == 3:
            for i, _ in enumerate(msg.reps(pid, 3)):
                if msg.get(pid, 3, 5, i).upper() in ID_TYPES:
                    return msg.get(pid, 3, 1, i)
            return ""
        return msg.get(pid, n, c)

    def _phone(self, msg: Message, pid) -> str:
        m = FIELD_RE.match(self.s.phone_field)
        n = int(m.group(2))
        if m.group(3):
            v = msg.get(pid, n, int(m.group(3)))
        else:
            v = (msg.get(pid, n, 1) or msg.get(pid, n, 12)
                 or msg.get(pid, n, 6) + msg.get(pid, n, 7))
        # validated by upsert_patient: a value that is not a phone number is stored as
        # unverified and answered with a warning (AA), never AE
        return re.sub(r"[\s\-()]", "", v)

    # orders ----------------------------------------------------------------------------
    def accession(self, msg: Message) -> str:
        """hl7_accession_field (default IPC-1, where IHE OMI^O23 carries it), then IPC-1,
        OBR-18, OBR-3, ORC-3, OBR-2, ORC-2: the first that is not empty."""
        m = ACC_RE.match(self.s.accession_field)
        first = msg.get(m.group(1), int(m.group(2)), int(m.group(3) or 1))
        return (first or msg.get("IPC", 1) or msg.get("OBR", 18) or msg.get("OBR", 3)
                or msg.get("ORC", 3) or msg.get("OBR", 2) or msg.get("ORC", 2))

    def study_uid(self, msg: Message) -> str:
        uid = msg.get("ZDS", 1) or msg.get("IPC", 3)
        if uid and not valid_uid(uid):
            raise IntegrationError(f"Study Instance UID {uid[:70]!r} (ZDS-1 / IPC-3) is not a "
                                   "DICOM UID", where="ZDS-1" if msg.get("ZDS", 1) else "IPC-3",
                                   hl7_code=102)
        return uid

    def _order_fields(self, msg: Message) -> dict:
        obr = msg.first("OBR")
        modality = (msg.get("IPC", 5) or msg.get(obr, 24) or msg.get(obr, 4, 1)[:2]
                    if obr or msg.first("IPC") else "")
        when = (msg.get("TQ1", 7) or msg.get("ORC", 7, 4) or msg.get(obr, 36)
                or msg.get(obr, 7) or msg.get(obr, 6))
        return {"accession": self.accession(msg), "study_uid": self.study_uid(msg),
                "modality": re.sub(r"[^A-Za-z]", "", modality or "")[:16],
                "description": msg.get(obr, 4, 2) or msg.get(obr, 4, 1),
                "exam_date": parse_date(when) if when else None,
                "referring_physician": " ".join(p for p in (msg.get(obr, 16, 2),
                                                            msg.get(obr, 16, 3)) if p)}

    def _order(self, msg: Message) -> str:
        if msg.first("ORC") is None and msg.first("OBR") is None:
            raise IntegrationError("order without ORC and OBR segments")
        ctl = msg.get("ORC", 1).upper()
        st = msg.get("ORC", 5).upper()
        if ctl in ("CA", "OC", "DC", "CR", "OD") or st in ("CA", "DC"):
            status = "cancelled"
        elif st == "SC" or ctl == "SC" and not st:
            status = "scheduled"
        elif st in ("IP", "CM", "A"):
            status = "examined"
        elif ctl in ("NW", "") or st in ("", "HD"):
            status = "ordered"
        elif ctl == "XO":
            status = None
        else:
            raise Unsupported(f"order control {ctl!r} / status {st!r} is not supported")
        o = self._order_fields(msg)
        o["status"] = status
        exam = upsert_order(self.catalog, self.patient_fields(msg), o, source="hl7")
        return f"order {exam.accession_number}: {exam.status}"

    # results ---------------------------------------------------------------------------
    def _result(self, msg: Message) -> str:
        obr = msg.first("OBR")
        if obr is None:
            raise IntegrationError("ORU^R01 without an OBR segment")
        status_code = msg.get(obr, 25).upper()
        if status_code == "X":
            raise IntegrationError("OBR-25 'X' (result cannot be obtained) carries no report",
                                   where="OBR-25", hl7_code=103)
        if status_code not in RESULT_STATUS:
            raise IntegrationError(f"OBR-25 result status {status_code!r} is not one of "
                                   "P, F, C", where="OBR-25", hl7_code=103)
        accession, study_uid = self.accession(msg), self.study_uid(msg)
        findings, impression, measurements = self._observations(msg)
        pdf = self._pdf(msg)
        if measurements:
            findings.append("\n".join(measurements))
        exam = find_exam(accession, study_uid)
        if exam is None:
            if msg.first("PID") is None:
                raise IntegrationError(f"no exam with accession number {accession!r} and no "
                                       "PID segment to create it")
            exam = upsert_order(self.catalog, self.patient_fields(msg),
                                {**self._order_fields(msg), "status": "examined"},
                                source="hl7")
        elif msg.first("PID") is not None and same_patient(
                exam.patient_id, self.patient_fields(msg)["patient_id"]):
            upsert_patient(self.catalog, self.patient_fields(msg))
        signer, reviewer = _interpreter(msg, obr, 32), _interpreter(msg, obr, 33)
        signed = parse_ts(msg.get(obr, 22)) or parse_ts(
            msg.get(msg.all("OBX")[0], 14) if msg.all("OBX") else "")
        r = ReportFields(findings="\n".join(findings), impression="\n".join(impression),
                         pdf=pdf, author=signer, reviewer=reviewer,
                         signed_at=signed, status=RESULT_STATUS[status_code],
                         patient_id=self.patient_fields(msg)["patient_id"]
                         if msg.first("PID") is not None else "",
                         source="hl7", origin=f"hl7:{msg.control_id}"[:255])
        file_report(self.catalog, exam, r, receivers=self.s.receivers)
        return f"report {exam.accession_number or exam.study_uid}: {r.status}" + (
            " with PDF" if pdf else "")

    def _observations(self, msg: Message) -> tuple[list[str], list[str], list[str]]:
        """OBX rows of every value type: text (TX, FT, ST, CE/CWE, and any other type) into
        the findings, or the impression when OBX-3 names one; NM/SN rows as measurement
        lines 'name: value unit (range) flag'; ED and RP rows are the PDF (_pdf)."""
        findings, impression, measurements = [], [], []
        for obx in msg.all("OBX"):
            vtype = msg.get(obx, 2).upper()
            if vtype in ("ED", "RP"):
                continue
            ident = " ".join(msg.get(obx, 3, i) for i in (1, 2)).upper()
            if vtype in ("NM", "SN"):
                measurements.append(_measurement(msg, obx, vtype))
                continue
            if vtype in ("CE", "CWE", "CNE", "CF"):
                value = "\n".join(msg.get(obx, 5, 2, r) or msg.get(obx, 5, 1, r)
                                  for r in range(len(msg.reps(obx, 5))))
            elif vtype in ("TX", "FT", "ST", ""):
                value = "\n".join(msg.unescape(r) for r in msg.reps(obx, 5))
            else:   # DT, TS, TM, ID, IS, XPN, CX...: the components as text
                value = "\n".join(" ".join(msg.unescape(c) for c in msg.comps(r) if c)
                                  for r in msg.reps(obx, 5))
            value = value.strip()
            if not value:
                continue
            target = impression if any(k in ident for k in IMPRESSION_KEYS) else findings
            target.append(value)
        return findings, impression, measurements

    def _pdf(self, msg: Message) -> bytes | None:
        """The report PDF from OBX rows of type ED (OBX-5: source ^ Application ^ PDF ^
        Base64 ^ data): one row, or a PDF split over several rows (or OBX-5 repetitions),
        concatenated in order; a continuation row may carry only the data (^^^^data or the
        bare data). None when the message has no ED row."""
        chunks: list[str] = []
        for obx in msg.all("OBX"):
            if msg.get(obx, 2).upper() != "ED":
                continue
            for r, rep in enumerate(msg.reps(obx, 5)):
                parts = msg.comps(rep)
                if len(parts) == 1:             # continuation: bare data
                    chunks.append(parts[0])
                    continue
                typ = msg.get(obx, 5, 2, r).upper()
                sub = msg.get(obx, 5, 3, r).upper()
                enc = msg.get(obx, 5, 4, r).upper()
                if typ and (typ not in ("APPLICATION", "AP") or sub != "PDF"):
                    raise IntegrationError(f"OBX-5 encapsulated data of type {typ}/{sub}: "
                                           "only Application/PDF is accepted", where="OBX-5",
                                           hl7_code=102)
                if enc and enc not in ("BASE64", "B64", "A"):
                    raise IntegrationError(f"OBX-5 encoding {enc!r}: only Base64 is accepted",
                                           where="OBX-5", hl7_code=102)
                chunks.append(msg.component_raw(obx, 5, 5, r))
        if not chunks:
            return None
        pdf = _b64_chunks([re.sub(r"\s+|\\\.br\\", "", c) for c in chunks])
        if pdf is None:
            raise IntegrationError("OBX-5 PDF data is not valid base64", where="OBX-5",
                                   hl7_code=102)
        if not pdf.startswith(b"%PDF-"):
            raise IntegrationError("OBX-5 data decodes to something that is not a PDF "
                                   "(no %PDF- header)", where="OBX-5", hl7_code=102)
        return pdf


def _type_of(msg: Message) -> str:
    """MSH-9 as TYPE^TRIGGER (ADT^A08), what a peer's message types name."""
    t, trig = msg.get("MSH", 9, 1).upper(), msg.get("MSH", 9, 2).upper()
    return f"{t}^{trig}" if trig else t


def _b64_chunks(chunks: list[str]) -> bytes | None:
    """Base64 split over rows: the joined text, else each row decoded on its own (senders
    that pad every row)."""
    for attempt in ("".join(chunks), None):
        try:
            if attempt is not None:
                return base64.b64decode(attempt, validate=True)
            return b"".join(base64.b64decode(c, validate=True) for c in chunks if c)
        except (binascii.Error, ValueError):
            continue
    return None


def _measurement(msg: Message, obx, vtype: str) -> str:
    """An NM (or SN) OBX row as 'name: value unit (range) flag'."""
    name = msg.get(obx, 3, 2) or msg.get(obx, 3, 1) or "value"
    if vtype == "SN":
        value = "".join(msg.get(obx, 5, i) for i in (1, 2, 3, 4))
    else:
        value = msg.get(obx, 5)
    unit = msg.get(obx, 6, 1) or msg.get(obx, 6, 2)
    line = f"{name}: {value}" + (f" {unit}" if unit else "")
    if msg.get(obx, 7):
        line += f" ({msg.get(obx, 7)})"
    flag = msg.get(obx, 8)
    if flag and flag.upper() != "N":
        line += f" {flag}"
    return line


def _interpreter(msg: Message, obr, n: int) -> str:
    """OBR-32/33 (NDL): the first component is CNN: ID & family & given."""
    parts = [msg.unescape(p).strip() for p in msg.component_raw(obr, n, 1).split(msg.ss)]
    names = [p for p in parts[1:3] if p]
    if not names:
        return parts[0] if parts else ""
    return ("" if any(CJK_RE.search(p) for p in names) else " ").join(names)
