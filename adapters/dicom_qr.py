"""Our Query/Retrieve SCP: C-FIND (Patient Root and Study Root, every level), C-MOVE to a
configured peer (dicom_peers) and C-GET on the requestor's association. Instances are sent
as stored; when the receiver did not accept the stored transfer syntax they are
decompressed to explicit VR little endian with pydicom (an instance that cannot be is a
failed sub-operation). Matching lives in models/qr.py."""
from __future__ import annotations

import io
import logging

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID
from pynetdicom import build_context
from pynetdicom.sop_class import (PatientRootQueryRetrieveInformationModelFind,
                                  PatientRootQueryRetrieveInformationModelGet,
                                  PatientRootQueryRetrieveInformationModelMove,
                                  StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove)

from models.catalog import Catalog
from models.qr import QueryError, find, retrieve_instances

from .dicom_meta import person_name_text

log = logging.getLogger(__name__)

FIND_MODELS = [PatientRootQueryRetrieveInformationModelFind,
               StudyRootQueryRetrieveInformationModelFind]
MOVE_MODELS = [PatientRootQueryRetrieveInformationModelMove,
               StudyRootQueryRetrieveInformationModelMove]
GET_MODELS = [PatientRootQueryRetrieveInformationModelGet,
              StudyRootQueryRetrieveInformationModelGet]
QR_MODELS = FIND_MODELS + MOVE_MODELS + GET_MODELS

PENDING = 0xFF00
CANCEL = 0xFE00
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_MISMATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
NATIVE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.2"}
MAX_CONTEXTS = 128


def parse_peers(text: str) -> dict[str, tuple[str, int]]:
    """dicom_peers: "AE=host:port,AE2=host:port" → {AE: (host, port)}."""
    peers: dict[str, tuple[str, int]] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        ae, sep, addr = part.partition("=")
        host, sep2, port = addr.strip().rpartition(":")
        if not sep or not sep2 or not ae.strip() or not host or not port.strip().isdigit():
            raise ValueError(f"dicom_peers entry {part!r} is not AE=host:port")
        peers[ae.strip()] = (host.strip(), int(port))
    return peers


def _keys(identifier: Dataset) -> dict:
    keys = {}
    for elem in identifier:
        if not elem.keyword or elem.VR == "SQ":
            continue
        v = elem.value
        if v is None or v == "":
            continue
        if elem.VR == "PN":
            v = person_name_text(v)
        elif isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
            v = "\\".join(str(x) for x in v)
        keys[elem.keyword] = str(v)
    return keys


def _response(identifier: Dataset, row: dict, level: str, ae_title: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    for elem in identifier:
        kw = elem.keyword
        if not kw or kw in ("SpecificCharacterSet", "QueryRetrieveLevel"):
            continue
        if kw == "RetrieveAETitle":
            ds.RetrieveAETitle = ae_title
        elif kw in row:
            value = row[kw]
            if elem.VR in ("IS", "US", "UL") and value == "":
                setattr(ds, kw, None)
            elif "\\" in value and elem.VR in ("CS", "UI", "LO", "SH"):
                setattr(ds, kw, value.split("\\"))
            else:
                setattr(ds, kw, value)
        else:
            ds.add_new(elem.tag, elem.VR, None)
    # the unique keys of the levels above always come back
    for kw in {"PATIENT": [], "STUDY": ["StudyInstanceUID"],
               "SERIES": ["StudyInstanceUID", "SeriesInstanceUID"],
               "IMAGE": ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]}[level]:
        if kw not in ds and row.get(kw):
            setattr(ds, kw, row[kw])
    return ds


def _failure(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.ErrorComment = comment[:64]
    return ds


class QueryRetrieve:
    def __init__(self, catalog: Catalog, ae_title: str,
                 peers: dict[str, tuple[str, int]] | None = None):
        self.catalog, self.ae_title = catalog, ae_title
        self.peers = dict(peers or {})

    # C-FIND ------------------------------------------------------------------------------
    def on_find(self, event):
        identifier = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "") or "").upper()
        patient_root = event.request.AffectedSOPClassUID == \
            PatientRootQueryRetrieveInformationModelFind
        try:
            rows = list(find(level, _keys(identifier), patient_root=patient_root))
        except QueryError as exc:
            yield IDENTIFIER_MISMATCH, _failure(IDENTIFIER_MISMATCH, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - answer a failure, keep the listener
            log.exception("C-FIND failed")
            yield UNABLE_TO_PROCESS, _failure(UNABLE_TO_PROCESS, type(exc).__name__)
            return
        for row in rows:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, _response(identifier, row, level, self.ae_title)

    # C-MOVE / C-GET ----------------------------------------------------------------------
    def _instances(self, event) -> list[dict]:
        identifier = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "") or "").upper()
        return retrieve_instances(level, _keys(identifier))

    def _load(self, inst: dict, accepted: set[tuple[str, str]]) -> Dataset:
        data = self.catalog.storage.read(inst["file_path"])
        ds = dcmread(io.BytesIO(data), force=True)
        ts = str(ds.file_meta.TransferSyntaxUID)
        sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", inst["sop_class_uid"]))
        if (sop_class, ts) in accepted or ts in NATIVE:
            return ds          # as stored (pynetdicom converts between native syntaxes)
        if (sop_class, ExplicitVRLittleEndian) in accepted or \
                (sop_class, ImplicitVRLittleEndian) in accepted:
            try:    # → explicit VR little endian, decoded in the limited worker (issue 14)
                from .dicomweb import explicit_le
                ds = dcmread(io.BytesIO(explicit_le(data)), force=True)
            except Exception as exc:  # noqa: BLE001 - sent as is: a failed sub-operation
                log.warning("cannot convert %s from %s: %s", inst["sop_uid"], ts, exc)
        return ds

    @staticmethod
    def _accepted(assoc, *, as_scu: bool = True) -> set[tuple[str, str]]:
        out = set()
        for cx in assoc.accepted_contexts:
            if as_scu and not cx.as_scu:
                continue
            out.add((str(cx.abstract_syntax), str(cx.transfer_syntax[0])))
        return out

    def on_get(self, event):
        try:
            instances = self._instances(event)
        except QueryError as exc:
            yield IDENTIFIER_MISMATCH, _failure(IDENTIFIER_MISMATCH, str(exc))
            return
        yield len(instances)
        accepted = self._accepted(event.assoc)
        for inst in instances:
            if event.is_cancelled:
                yield CANCEL, None
                return
            try:
                ds = self._load(inst, accepted)
            except Exception as exc:  # noqa: BLE001 - counted failed by pynetdicom
                log.warning("C-GET: cannot read %s: %s", inst["sop_uid"], exc)
                ds = b"unreadable"
            yield PENDING, ds

    def on_move(self, event):
        dest = event.move_destination
        dest = dest.decode("ascii", "replace") if isinstance(dest, bytes) else str(dest)
        dest = dest.strip()
        if dest not in self.peers:
            log.warning("C-MOVE to unknown destination %r refused", dest)
            yield None, None
            return
        try:
            instances = self._instances(event)
        except QueryError as exc:
            yield None, None  # pynetdicom needs the destination first; refuse the request
            log.warning("C-MOVE identifier: %s", exc)
            return
        host, port = self.peers[dest]
        contexts, seen = [], set()
        for inst in instances:
            key = (inst["sop_class_uid"], inst["transfer_syntax"])
            if key in seen or len(contexts) >= MAX_CONTEXTS - 1:
                continue
            seen.add(key)
            contexts.append(build_context(UID(key[0]), [UID(key[1])]))
            if (key[0], "native") not in seen and key[1] not in NATIVE:
                seen.add((key[0], "native"))
                contexts.append(build_context(UID(key[0]), [ExplicitVRLittleEndian,
                                                            ImplicitVRLittleEndian]))
        contexts = contexts[:MAX_CONTEXTS]
        yield host, port, {"contexts": contexts, "ae_title": dest}
        yield len(instances)
        accepted: set[tuple[str, str]] | None = None
        for inst in instances:
            if event.is_cancelled:
                yield CANCEL, None
                return
            if accepted is None:
                accepted = self._store_assoc_accepted(event, dest)
            try:
                ds = self._load(inst, accepted)
            except Exception as exc:  # noqa: BLE001
                log.warning("C-MOVE: cannot read %s: %s", inst["sop_uid"], exc)
                ds = b"unreadable"
            yield PENDING, ds

    def _store_assoc_accepted(self, event, dest: str) -> set[tuple[str, str]]:
        """The contexts the move destination accepted: pynetdicom does not hand us its
        sub-association, so find it among the AE's requestor associations."""
        out: set[tuple[str, str]] = set()
        for assoc in event.assoc.ae.active_associations:
            if assoc.is_requestor and assoc.is_established and \
                    assoc.acceptor.ae_title.strip() == dest:
                out |= self._accepted(assoc, as_scu=False)
        return out
