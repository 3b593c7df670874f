"""DICOM networking with pynetdicom: our SCP (C-ECHO, C-STORE of every storage SOP class in
any transfer syntax) and the SCU side towards the hospital PACS (C-FIND of a patient's
exams, C-MOVE or C-GET of one study with progress).

A C-STORE is answered Success only after the file is durable and indexed (Catalog.
store_instance); any failure answers a failure status with the reason in Error Comment and
keeps the file in quarantine. A resent SOP Instance UID (models/versions.py) answers Success
when its content is the same or it became a new version, 0xB000 (warning) when
dicom_conflict_policy = keep_first refused other pixel data, 0xC002 under quarantine.
A crashing handler never kills the association or the server.
Logs name UIDs and AE titles, never patient data.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from pydicom.dataset import Dataset
from pynetdicom import (AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts,
                        build_role, evt)
from pynetdicom.sop_class import (EncapsulatedPDFStorage,
                                  StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove, Verification)

from models.catalog import ALREADY_PRESENT, STORED, Catalog, find_exam
from models.db import close_connection
from models.integration import (ReportFields, file_report, note_event,
                                retrieve_job_update)
from models.peers import Gate, audit_refusal

from .dicom_meta import (ENCAPSULATED_PDF, DecodedTooLarge, DicomRejected, extract_meta,
                         person_name_text)
from .dicomweb import write_metadata_sidecar
from .fast_copy import BackgroundCopies, needs_fast_copy

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
MAX_PDU_BYTES = 1 << 20      # our maximum PDU receive size (A-ASSOCIATE user information)
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0xC001
DUPLICATE_CONFLICT = 0xC002
# a SOP class the sending peer may not store (peer table): 'data set does not match SOP
# class' (a failure, so a well-behaved sender does not retry it)
SOP_CLASS_REFUSED = 0xA900
# a resend with other pixel data under dicom_conflict_policy = keep_first: the stored
# instance is kept, this one is not applied (a warning, so the sender does not retry)
KEPT_FIRST_WARNING = 0xB000


NATIVE = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2",
          "1.2.840.10008.1.2.1.99"]
# pynetdicom accepts the first of OUR syntaxes that the peer proposes: compressed ones come
# first, so a file is received as it was sent (never decompressed on the way).
ACCEPT_ORDER = [ts for ts in ALL_TRANSFER_SYNTAXES if ts not in NATIVE] + NATIVE


def _failure(status: int, reason: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = reason[:64]
    return ds


class InstanceSink:
    """Stores received instances (SCP and C-GET share it). Thread-safe."""

    def __init__(self, catalog: Catalog, *, charset_fallback: str = "GB18030",
                 fast_copies: bool = True, on_stored: Callable[[dict], None] | None = None,
                 receivers: list[str] = (), charset_overrides: dict[str, str] | None = None):
        self.catalog = catalog
        # calling AE title → the character set its files really use (dicom_charset_overrides)
        self.charset_overrides = {k.upper(): v for k, v in (charset_overrides or {}).items()}
        self.receivers = list(receivers)     # HL7 'film published' for a filed PDF report
        self.charset_fallback = charset_fallback
        self.fast_copies = fast_copies
        self.on_stored = on_stored
        self._lock = threading.Lock()
        self.stored = self.failed = 0
        self.copies = BackgroundCopies(catalog.storage) if fast_copies else None

    def store(self, data: bytes, origin: str, charset: str = "") -> int | Dataset:
        """`charset`: the sending peer's own character set (peer table), which comes before
        dicom_charset_overrides."""
        if self.copies is not None:
            self.copies.activity()              # queued copies wait while instances arrive
        try:
            meta, ds = extract_meta(data, charset_fallback=self.charset_fallback,
                                    charset_override=charset or self.charset_overrides.get(
                                        origin.split("@", 1)[0].strip().upper()))
        except DicomRejected as exc:
            self.catalog.quarantine(data, str(exc), "dicom", origin)
            log.info("C-STORE from %s rejected: %s", origin, exc)
            return self._fail(OUT_OF_RESOURCES if isinstance(exc, DecodedTooLarge)
                              else CANNOT_UNDERSTAND, str(exc))
        try:
            result = self.catalog.store_instance(meta, data, source="dicom", origin=origin)
        except OSError as exc:
            log.error("C-STORE of %s: cannot write: %s", meta.get("sop_uid"), exc)
            return self._fail(OUT_OF_RESOURCES, f"cannot write the file: {exc.strerror}")
        if result.outcome not in (STORED, ALREADY_PRESENT):
            log.info("C-STORE of %s: %s (%s)", result.sop_uid, result.outcome, result.reason)
            code = DUPLICATE_CONFLICT if result.outcome == "conflict" else CANNOT_UNDERSTAND
            return self._fail(code, result.reason)
        if meta["sop_class_uid"] == ENCAPSULATED_PDF:
            self._pdf_report(meta, ds)
        elif result.outcome == STORED and self.copies is not None:
            if needs_fast_copy(meta["transfer_syntax"]):
                self._fast_copy(meta, result.extra.get("version", 1))
            if "file_path" in result.extra:       # its WADO-RS metadata, after the answer
                self.copies.add_job(write_metadata_sidecar, result.extra["file_path"],
                                    result.extra["sha256"], result.study_uid,
                                    meta["series_uid"], result.sop_uid)
        with self._lock:
            self.stored += 1
        if result.extra.get("resend") == "kept_first":
            log.info("C-STORE of %s: %s", result.sop_uid, result.reason)
            return _failure(KEPT_FIRST_WARNING, "kept the first version; not applied")
        if self.on_stored:
            try:
                self.on_stored(meta)
            except Exception:  # noqa: BLE001
                log.exception("on_stored callback failed")
        return SUCCESS

    def _fail(self, code: int, reason: str) -> Dataset:
        with self._lock:
            self.failed += 1
        return _failure(code, reason)

    def _pdf_report(self, meta: dict, ds: Dataset) -> None:
        """An Encapsulated PDF object becomes the exam's PDF report, keeping the report's
        text (file_report's rules; the DICOM object is kept as well)."""
        pdf = bytes(ds.get("EncapsulatedDocument", b"") or b"").rstrip(b"\x00")
        exam = find_exam(meta["study_uid"])
        if exam is None or not pdf.startswith(b"%PDF-"):
            return
        try:
            file_report(self.catalog, exam, ReportFields(
                pdf=pdf, pdf_only=True, patient_id=meta["patient_id"], source="dicom",
                origin=meta["sop_uid"]), receivers=self.receivers)
        except Exception as exc:  # noqa: BLE001 - the instance itself is stored
            log.info("encapsulated PDF %s not filed as report: %s", meta["sop_uid"], exc)

    def _fast_copy(self, meta: dict, version: int = 1) -> None:
        """Queue the fast copy of a compressed instance: made after the ingest, never before
        the answer (adapters/fast_copy.py BackgroundCopies)."""
        st = self.catalog.storage
        rel = st.instance_relpath(meta["study_uid"], meta["series_uid"], meta["sop_uid"],
                                  version=version)
        self.copies.add(rel, st.fast_copy_of(rel))


DICOM_CHARSETS = ("GB18030", "GBK", "ISO_IR 192", "ISO_IR 100", "ISO 2022 IR 58")


def parse_charset_overrides(text: str) -> dict[str, str]:
    """Setting dicom_charset_overrides 'US01=GBK,CT2=GB18030' → {calling AE: charset}."""
    out = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        ae, _, charset = item.partition("=")
        charset = charset.strip().upper()
        if not ae.strip() or len(ae.strip()) > 16 or charset not in DICOM_CHARSETS:
            raise ValueError(f"setting dicom_charset_overrides: {item.strip()!r} is not "
                             f"AE_TITLE=CHARSET with CHARSET one of {', '.join(DICOM_CHARSETS)}")
        out[ae.strip().upper()] = charset
    return out


def _peer(event) -> str:
    r = event.assoc.requestor
    return f"{r.ae_title}@{r.address}:{r.port}"


class DicomScp:
    def __init__(self, catalog: Catalog, *, ae_title: str = "CLOUDFILM",
                 host: str = "127.0.0.1", port: int = 11112,
                 allowed_aets: list[str] | None = None, max_associations: int = 8,
                 charset_fallback: str = "GB18030", fast_copies: bool = True,
                 on_stored: Callable[[dict], None] | None = None, receivers: list[str] = (),
                 charset_overrides: dict[str, str] | None = None,
                 peers: dict[str, tuple[str, int]] | None = None,
                 query_retrieve: bool = True, gate: Gate | None = None,
                 ssl_context=None):
        # trusted peers (models/peers.py): who may associate and which SOP classes each may
        # store; None: the allowed_aets list as before. ssl_context: DICOM over TLS.
        self.gate = gate
        self.ssl_context = ssl_context
        self.peers = dict(peers or {})
        self.query_retrieve = query_retrieve
        self.sink = InstanceSink(catalog, charset_fallback=charset_fallback,
                                 fast_copies=fast_copies, on_stored=on_stored,
                                 receivers=receivers, charset_overrides=charset_overrides)
        self.ae_title, self.host, self.port = ae_title, host, port
        self.allowed = [a.strip() for a in (allowed_aets or []) if a.strip()]
        self.max_associations = max_associations
        self.server = None
        self.associations = 0
        self.last_peer = ""

    def start(self) -> "DicomScp":
        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = self.max_associations
        # a bounded PDU (issue 14): 1 MiB is still few PDUs per instance; 0 invited a sender to
        # put a whole dataset in one PDU (pynetdicom itself reads whatever length a PDU
        # declares, so a hostile peer is bounded by the timeouts and dicom_max_associations)
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.network_timeout = 60
        ae.dimse_timeout = 60
        ae.acse_timeout = 30
        for cx in AllStoragePresentationContexts:
            # the roles: a C-GET requestor asks to be the storage SCP on our association
            ae.add_supported_context(cx.abstract_syntax, ACCEPT_ORDER, scu_role=True,
                                     scp_role=True)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        qr_handlers = []
        if self.query_retrieve:
            from .dicom_qr import QR_MODELS, QueryRetrieve
            self.qr = QueryRetrieve(self.sink.catalog, self.ae_title, self.peers)
            for model in QR_MODELS:
                ae.add_supported_context(model, NATIVE[:2])
            qr_handlers = [(evt.EVT_C_FIND, self.qr.on_find), (evt.EVT_C_GET, self.qr.on_get),
                           (evt.EVT_C_MOVE, self.qr.on_move)]
        if self.gate is not None:
            qr_handlers.append((evt.EVT_REQUESTED, self._on_requested))
            if self.gate.loopback and not self.allowed:
                log.warning("DICOM listener on loopback: senders not in the peer table are "
                            "accepted")
        elif self.allowed:
            ae.require_calling_aet = self.allowed
        else:
            log.warning("DICOM listener accepts any calling AE title (set dicom_allowed_aets)")
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_REJECTED, self._on_rejected), (evt.EVT_ABORTED, self._on_aborted),
                    (evt.EVT_ESTABLISHED, self._on_established),
                    (evt.EVT_RELEASED, self._on_end), (evt.EVT_CONN_CLOSE, self._on_end),
                    *qr_handlers]
        self.ae = ae
        self.server = ae.start_server((self.host, self.port), block=False,
                                      evt_handlers=handlers, ssl_context=self.ssl_context)
        self.port = self.server.server_address[1]
        log.info("DICOM listener %s on %s:%d", self.ae_title, self.host, self.port)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        if self.sink.copies is not None:
            self.sink.copies.close()

    def drain(self, grace_s: float) -> int:
        """SIGTERM: accept no more associations, let the running ones (a modality's
        C-STORE, a retrieve) finish for at most grace_s, then abort the rest (their sender
        sends again what got no success status). Returns how many were aborted."""
        server, self.server = self.server, None
        left = []
        if server is not None:
            server.shutdown()
            deadline = time.monotonic() + grace_s
            while server.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
            left = server.active_associations
            for assoc in left:
                assoc.abort()
        self.stop()
        return len(left)

    # handlers --------------------------------------------------------------------------
    def _admission(self, assoc, what: str = ""):
        r = assoc.requestor
        ae = r.ae_title if r.ae_title else str(getattr(r.primitive, "calling_ae_title", ""))
        return self.gate.admit(r.address, ae_title=ae.strip(), what=what), ae.strip()

    def _on_requested(self, event) -> None:
        """A-ASSOCIATE-RQ: a calling AE title / address the peer table does not know is
        rejected (calling AE title not recognised), audited peer.refused."""
        try:
            adm, ae = self._admission(event.assoc)
            if adm.allowed:
                return
            r = event.assoc.requestor
            log.warning("DICOM association from %s@%s refused: %s", ae, r.address, adm.reason)
            audit_refusal(getattr(self.sink.catalog, "auditor", None), "dicom", r.address,
                          ae_title=ae, reason=adm.reason)
            note_event("dicom", f"{ae}@{r.address}:{r.port}", "rejected",
                       f"association rejected: {adm.reason}")
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)
        except Exception:  # noqa: BLE001 - a refusal must never crash the server
            log.exception("DICOM peer check failed")
            if not event.assoc.is_rejected:
                event.assoc.acse.send_reject(0x02, 0x02, 0x01)
        finally:
            self._close_db()

    def _store_refused(self, event) -> Dataset | None:
        """A SOP class this peer may not store: 0xA900 (audited), nothing kept."""
        if self.gate is None:
            return None
        sop_class = str(event.request.AffectedSOPClassUID)
        adm, ae = self._admission(event.assoc, sop_class)
        if adm.allowed:
            return None
        audit_refusal(getattr(self.sink.catalog, "auditor", None), "dicom",
                      event.assoc.requestor.address, ae_title=ae,
                      message_type=f"C-STORE {sop_class}", reason=adm.reason)
        with self.sink._lock:
            self.sink.failed += 1
        return _failure(SOP_CLASS_REFUSED, "SOP class not allowed for this peer")

    def _on_store(self, event) -> int | Dataset:
        origin = _peer(event)
        refused = self._store_refused(event)
        if refused is not None:
            return refused
        try:
            data = event.encoded_dataset()
        except Exception as exc:  # noqa: BLE001 - a dataset we cannot even re-encode
            self.sink.catalog.quarantine(None, f"unreadable C-STORE dataset: {exc}", "dicom",
                                         origin)
            return _failure(CANNOT_UNDERSTAND, f"unreadable dataset: {exc}")
        try:
            charset = self._admission(event.assoc)[0].charset if self.gate else ""
            return self.sink.store(data, origin, charset)
        except Exception as exc:  # noqa: BLE001 - never kill the association
            log.exception("C-STORE handler failed")
            try:
                self.sink.catalog.quarantine(data, f"internal error: {type(exc).__name__}: "
                                             f"{exc}", "dicom", origin)
            except Exception:  # noqa: BLE001
                pass
            return _failure(PROCESSING_FAILURE, f"internal error: {type(exc).__name__}")

    def _on_echo(self, event) -> int:
        return SUCCESS

    def _on_established(self, event) -> None:
        self.associations += 1
        self.last_peer = _peer(event)

    def _on_rejected(self, event) -> None:
        peer = _peer(event)
        log.warning("DICOM association from %s rejected (calling AE title not allowed or "
                    "nothing acceptable proposed)", peer)
        note_event("dicom", peer, "rejected", "association rejected: calling AE title not in "
                   "dicom_allowed_aets or no acceptable presentation context")
        self._close_db()

    def _on_aborted(self, event) -> None:
        peer = _peer(event)
        log.info("DICOM association from %s aborted", peer)
        note_event("dicom", peer, "error", "association aborted (peer disconnected or "
                   "network error); instances acknowledged before it are stored")
        self._close_db()

    def _on_end(self, event) -> None:
        self._close_db()

    @staticmethod
    def _close_db() -> None:
        try:
            close_connection()
        except Exception:  # noqa: BLE001
            pass


# SCU towards the PACS ---------------------------------------------------------------------
@dataclass
class PacsNode:
    ae_title: str
    host: str
    port: int
    our_ae_title: str = "CLOUDFILM"

    @classmethod
    def from_config(cls, c) -> "PacsNode | None":
        if not (c.pacs_ae_title and c.pacs_host):
            return None
        return cls(c.pacs_ae_title, c.pacs_host, c.pacs_port, c.dicom_ae_title)


class PacsError(Exception):
    """The PACS could not be reached or refused; the message says which."""


def _associate(ae: AE, node: PacsNode, **kw):
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, **kw)
    if not assoc.is_established:
        raise PacsError(f"PACS {node.ae_title}@{node.host}:{node.port} refused the "
                        "association or cannot be reached")
    return assoc


def _dt(s) -> object:
    from .dicom_meta import _date
    return _date(s)


def find_patient_studies(node: PacsNode, patient_id: str,
                         charset_fallback: str = "GB18030") -> tuple[dict, list[dict]]:
    """C-FIND (Study Root, STUDY level) of one patient's exams in the PACS. Returns
    (patient fields, studies)."""
    ae = AE(ae_title=node.our_ae_title)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.SpecificCharacterSet = "ISO_IR 192"
    q.PatientID = patient_id
    for kw in ("PatientName", "PatientSex", "PatientBirthDate", "StudyInstanceUID",
               "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
               "StudyDescription", "NumberOfStudyRelatedInstances",
               "NumberOfStudyRelatedSeries"):
        setattr(q, kw, "")
    assoc = _associate(ae, node)
    studies, patient = [], {"patient_id": patient_id}
    try:
        for status, ident in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind):
            if status is None or "Status" not in status:
                raise PacsError("the PACS stopped answering the query (timeout or abort)")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01) and ident is not None:
                if "SpecificCharacterSet" not in ident:
                    ident.SpecificCharacterSet = charset_fallback
                try:
                    ident.decode()
                except Exception:  # noqa: BLE001
                    pass
                if ident.get("PatientID", patient_id) != patient_id:
                    continue
                patient.setdefault("name", person_name_text(ident.get("PatientName")))
                patient.setdefault("sex", str(ident.get("PatientSex", "") or "")[:1])
                patient.setdefault("birth_date", _dt(ident.get("PatientBirthDate")))
                mods = ident.get("ModalitiesInStudy", "")
                mods = "\\".join(mods) if isinstance(mods, (list, tuple)) or \
                    hasattr(mods, "__iter__") and not isinstance(mods, str) else str(mods)
                studies.append({
                    "study_uid": str(ident.get("StudyInstanceUID", "")),
                    "accession": str(ident.get("AccessionNumber", "") or ""),
                    "study_date": _dt(ident.get("StudyDate")),
                    "modality": mods,
                    "description": str(ident.get("StudyDescription", "") or ""),
                    "num_instances": int(ident.get("NumberOfStudyRelatedInstances") or 0),
                    "num_series": int(ident.get("NumberOfStudyRelatedSeries") or 0),
                })
            elif code != 0x0000:
                raise PacsError(f"C-FIND failed with status 0x{code:04X}")
    finally:
        assoc.release()
    return patient, studies


def retrieve_study(node: PacsNode, study_uid: str, *, method: str = "move",
                   sink: InstanceSink | None = None) -> dict:
    """Fetch one study: C-MOVE to our listener (the PACS must know our AE title) or C-GET
    on this association (received instances go to sink). Progress is written to the
    study's RetrieveJob as the PACS reports it."""
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = study_uid
    ae = AE(ae_title=node.our_ae_title)
    if method == "get":
        if sink is None:
            raise ValueError("C-GET needs an InstanceSink")
        model = StudyRootQueryRetrieveInformationModelGet
        ae.add_requested_context(model)
        roles = get_contexts(ae, sop_classes_in_study(node, study_uid))

        def on_store(event):
            return sink.store(event.encoded_dataset(), f"{node.ae_title} C-GET")
        assoc = _associate(ae, node, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        responses = assoc.send_c_get(q, model)
    else:
        model = StudyRootQueryRetrieveInformationModelMove
        ae.add_requested_context(model)
        assoc = _associate(ae, node)
        responses = assoc.send_c_move(q, node.our_ae_title, model)
    retrieve_job_update(study_uid, status="running")
    last = {"completed": 0, "failed": 0, "warning": 0, "remaining": 0}
    try:
        for status, _ident in responses:
            if status is None or "Status" not in status:
                raise PacsError("the PACS stopped answering the retrieve (timeout or abort)")
            code = int(status.Status)
            last["remaining"] = 0            # absent from the final response
            for key, kw in (("completed", "NumberOfCompletedSuboperations"),
                            ("failed", "NumberOfFailedSuboperations"),
                            ("warning", "NumberOfWarningSuboperations"),
                            ("remaining", "NumberOfRemainingSuboperations")):
                if kw in status and status.get(kw) is not None:
                    last[key] = int(status.get(kw))
            total = last["completed"] + last["failed"] + last["warning"] + last["remaining"]
            retrieve_job_update(study_uid, expected=total,
                                completed=last["completed"] + last["warning"],
                                failed=last["failed"])
            if code in (0xFF00, 0xFF01):
                continue
            if code == 0x0000 or code == 0xB000:
                break
            raise PacsError(f"retrieve failed with status 0x{code:04X}"
                            + (f" ({status.get('ErrorComment')})"
                               if status.get("ErrorComment") else ""))
    finally:
        if assoc.is_established:
            assoc.release()
    if last["failed"] and not last["completed"]:
        raise PacsError(f"the PACS could not send any of {last['failed']} instances (does "
                        f"it know the AE title {node.our_ae_title} and our address?)")
    return last


MAX_CONTEXTS = 127          # presentation context IDs are odd numbers 1..255; one is the model


def sop_classes_in_study(node: PacsNode, study_uid: str) -> list[str]:
    """The SOP classes of a study: SOP Classes in Study (0008,0062) at STUDY level, else
    each instance's SOP Class UID at IMAGE level (most frequent first); [] when the PACS
    answers neither (then every usual class is proposed)."""
    for level, key in (("STUDY", "SOPClassesInStudy"), ("IMAGE", "SOPClassUID")):
        q = Dataset()
        q.QueryRetrieveLevel = level
        q.StudyInstanceUID = study_uid
        if level == "IMAGE":
            q.SeriesInstanceUID = q.SOPInstanceUID = ""
        setattr(q, key, "")
        counts: dict[str, int] = {}
        for ident in _find(node, q):
            value = ident.get(key, "") or ""
            for uid in ([value] if isinstance(value, str) else list(value)):
                if str(uid):
                    counts[str(uid)] = counts.get(str(uid), 0) + 1
        if counts:
            return sorted(counts, key=lambda u: -counts[u])
    return []


def _find(node: PacsNode, q: Dataset) -> list[Dataset]:
    """The matches of one Study Root C-FIND; [] when the PACS refuses or fails it."""
    ae = AE(ae_title=node.our_ae_title)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    try:
        assoc = _associate(ae, node)
    except PacsError:
        return []
    out = []
    try:
        for status, ident in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind):
            if status is None or "Status" not in status:
                return []
            if int(status.Status) in (0xFF00, 0xFF01) and ident is not None:
                out.append(ident)
            elif int(status.Status) != 0x0000:
                return []
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def get_contexts(ae: AE, sop_classes: list[str]) -> list:
    """Request the storage contexts a C-GET needs and return their role selections.

    One presentation context per (SOP class, transfer syntax): the PACS then sends each
    instance in the syntax it is stored in (a J2K or JPEG study arrives compressed, as
    stored) instead of having to transcode to the one syntax it picked for a context that
    offered them all (Orthanc cannot transcode J2K, and decompresses JPEG). When the study's
    classes are unknown, or too many for 127 contexts, the remaining classes get one context
    each offering every syntax."""
    classes = list(dict.fromkeys(sop_classes)) or \
        [cx.abstract_syntax for cx in AllStoragePresentationContexts
         if cx.abstract_syntax in GET_SOP_CLASSES]
    budget = MAX_CONTEXTS - 1
    roles = []
    for n, uid in enumerate(classes):
        left_after = len(classes) - n - 1       # keep one context for each class after this
        if sop_classes and budget - len(GET_TRANSFER_SYNTAXES) >= left_after:
            for ts in GET_TRANSFER_SYNTAXES:
                ae.add_requested_context(uid, [ts])
            budget -= len(GET_TRANSFER_SYNTAXES)
        elif budget > 0:
            ae.add_requested_context(uid, GET_TRANSFER_SYNTAXES)
            budget -= 1
        else:
            break
        roles.append(build_role(uid, scp_role=True))
    return roles


GET_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.6.1",
    "1.2.840.10008.5.1.4.1.1.3.1", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.12.1",
    "1.2.840.10008.5.1.4.1.1.77.1.1", "1.2.840.10008.5.1.4.1.1.77.1.2",
    "1.2.840.10008.5.1.4.1.1.77.1.4", "1.2.840.10008.5.1.4.1.1.77.1.6",
    "1.2.840.10008.5.1.4.1.1.20", "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.481.1",
    "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33", EncapsulatedPDFStorage,
}
GET_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2",
                         "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57",
                         "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                         "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                         "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
                         "1.2.840.10008.1.2.5"]


def store_contexts(instances: list[dict]) -> list:
    """Presentation contexts for sending these instances by C-STORE: one per (SOP class,
    stored transfer syntax), so each goes as stored, plus one per compressed class offering
    explicit then implicit VR little endian (the fallback when the peer refuses the stored
    syntax). At most 128 (the classes beyond get nothing and their instances fail)."""
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import build_context
    contexts, seen = [], set()
    for inst in instances:
        key = (inst["sop_class_uid"], inst["transfer_syntax"] or ExplicitVRLittleEndian)
        if key not in seen and len(contexts) < MAX_CONTEXTS:
            seen.add(key)
            contexts.append(build_context(UID(key[0]), [UID(key[1])]))
        fallback = (key[0], "native")
        if key[1] not in NATIVE and fallback not in seen and len(contexts) < MAX_CONTEXTS:
            seen.add(fallback)
            contexts.append(build_context(UID(key[0]), [ExplicitVRLittleEndian,
                                                        ImplicitVRLittleEndian]))
    return contexts


@dataclass
class SendResult:
    sent: list[str]                 # SOP Instance UIDs the peer stored (status success/warning)
    failures: dict[str, str]        # SOP Instance UID → reason
    not_tried: list[str]            # the association ended before these were sent


def send_instances(host: str, port: int, called: str, instances: list[dict],
                   read: Callable[[str], bytes], *, calling: str = "CLOUDFILM",
                   timeout: int = 30,
                   on_progress: Callable[[SendResult], None] | None = None,
                   progress_every_s: float = 1.0) -> SendResult:
    """C-STORE `instances` (dicts of models.qr.retrieve_instances) to a peer on one
    association: each as stored when the peer accepted that syntax, else decompressed to
    explicit VR little endian. Raises PacsError when the peer cannot be reached or refuses
    the association (nothing was sent). `on_progress(result so far)` is called at most every
    `progress_every_s`. Blocking: run it in a thread."""
    import io
    import time

    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    assoc = ae.associate(host, port, ae_title=called, contexts=store_contexts(instances))
    if not assoc.is_established:
        raise PacsError(f"{called}@{host}:{port} 拒绝连接或无法连接 / refused the "
                        "association or cannot be reached")
    accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in assoc.accepted_contexts}
    out = SendResult([], {}, [])
    last = time.monotonic()
    try:
        for n, inst in enumerate(instances):
            uid = inst["sop_uid"]
            if on_progress is not None and time.monotonic() - last >= progress_every_s:
                last = time.monotonic()
                try:
                    on_progress(out)
                except Exception:  # noqa: BLE001 - progress is for display only
                    log.warning("send progress not recorded", exc_info=True)
            if not assoc.is_established:
                out.not_tried = [i["sop_uid"] for i in instances[n:]]
                break
            cls, ts = inst["sop_class_uid"], inst["transfer_syntax"]
            try:
                ds = dcmread(io.BytesIO(read(inst["file_path"])), force=True)
                if (cls, ts) not in accepted and ts not in NATIVE:
                    if (cls, ExplicitVRLittleEndian) not in accepted and \
                            (cls, "1.2.840.10008.1.2") not in accepted:
                        out.failures[uid] = "peer accepted no transfer syntax for this class"
                        continue
                    ds.decompress(generate_instance_uid=False)   # the same instance, decoded
                    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                status = assoc.send_c_store(ds)
            except Exception as exc:  # noqa: BLE001 - one instance fails, the job goes on
                out.failures[uid] = f"{type(exc).__name__}: {str(exc)[:200]}"
                continue
            code = int(status.Status) if status and "Status" in status else -1
            if code == SUCCESS or (code >> 12) == 0xB:
                out.sent.append(uid)
            else:
                out.failures[uid] = (f"status 0x{code:04X}" if code >= 0 else
                                     "no answer (association ended)")
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def echo(host: str, port: int, called: str, calling: str = "CLOUDFILM") -> int:
    """C-ECHO; returns the status (0 = success). Used by the status view and tests."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        raise PacsError(f"{called}@{host}:{port} refused the association")
    try:
        st = assoc.send_c_echo()
        return int(st.Status) if st and "Status" in st else -1
    finally:
        assoc.release()


__all__ = ["DicomScp", "InstanceSink", "PacsNode", "PacsError", "find_patient_studies",
           "retrieve_study", "echo"]
