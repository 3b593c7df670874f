"""Issue 14 item 1 — peers are configured, not assumed. Real peers over real sockets: an HL7
sender (raw MLLP, and over TLS), a DICOM SCU (pynetdicom, and over TLS), the import API
over HTTP. Listeners bound to a non-loopback address (0.0.0.0 here) refuse senders missing
from the peer table (audited peer.refused); only the patient master may change a patient's
phone or ID number, and a change ends the patient's sessions (audited, masked)."""
from __future__ import annotations

import hashlib
import hmac
import json
import socket
import ssl
import time

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from adapters.hl7_codec import ack_code
from models.db import database, write_transaction
from models.peers import PEERS, Gate, save_peer
from models.schema import AuditEvent, Patient, Session
from models.staff import Actor
from tests import dicom_factory as F
from tests.conftest import staff_headers
from tests.integration import hl7_samples as S
from tests.integration.conftest import LoopThread
from tests.integration.test_hl7 import read_answer

pytestmark = pytest.mark.db
ADMIN = Actor("cli", "test")
NEW_PHONE = "13900139000"


@pytest.fixture
def loop_thread():
    lt = LoopThread()
    yield lt
    lt.stop()


def hl7_listener(ctx, loop_thread, host="0.0.0.0"):
    from server import integration
    return loop_thread.run(integration.start_hl7(ctx, host, 0))


@pytest.fixture
def hl7_open(ctx, loop_thread):
    """Our MLLP listener bound to every address (not loopback): peers are required."""
    from server import integration
    listener = hl7_listener(ctx, loop_thread)
    yield listener
    loop_thread.run(listener.stop())
    integration.SERVICES.hl7_executor.shutdown(wait=True)
    integration.SERVICES.__init__()


def add_peer(ctx, **d) -> None:
    with database.connection_context():
        save_peer(d, actor=ADMIN, auditor=ctx.auditor)
    PEERS.forget()


def mllp(port: int, text: str, *, wrap=None) -> tuple[tuple[str, str, str], bool]:
    """Send one message; (ACK code, control ID, text) and whether the server then closed."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    s = wrap(raw) if wrap else raw
    with s:
        s.sendall(S.frame(text))
        buf = read_answer(s)
        s.settimeout(5)
        try:
            closed = s.recv(1) == b""
        except (socket.timeout, ssl.SSLError):
            closed = False
        except OSError:
            closed = True
    text = buf.strip(b"\x0b\x1c\r").decode("utf-8", "replace")
    code, ctrl, _ = ack_code(text)
    return (code, ctrl, text), closed      # the whole ACK: MSA and the ERR segments


def patient_with_session(ctx):
    from models.integration import upsert_patient
    from models.sessions import create_session
    with database.connection_context():
        with write_transaction():
            p = upsert_patient(ctx.catalog, {"patient_id": "P1001", "name": "张伟",
                                             "phone": "13800138000",
                                             "id_number": S._id_number()})
        s = create_session("patient", patient=p, verified=True)
    return p, s.session


def audits(action: str) -> list[AuditEvent]:
    with database.connection_context():
        return list(AuditEvent.select().where(AuditEvent.action == action)
                    .order_by(AuditEvent.id))


def phone_of(pid="P1001") -> str:
    with database.connection_context():
        return Patient.get(Patient.patient_id == pid).phone


def test_hl7_unknown_sender_refused_and_closed(ctx, hl7_open):
    p, _ = patient_with_session(ctx)
    (code, ctrl, why), closed = mllp(hl7_open.port, S.adt("X1", phone=NEW_PHONE,
                                                          trigger="A08"))
    assert code == "AR" and ctrl == "X1" and "peer table" in why
    assert closed, "the connection of an unknown sender must be closed"
    assert phone_of() == "13800138000"
    [a] = audits("peer.refused")
    assert a.ip == "127.0.0.1" and "ADT^A08" in a.detail and "P1001" not in a.detail \
        and "138" not in a.detail


def test_hl7_on_loopback_unknown_sender_allowed_as_before(ctx, loop_thread):
    from server import integration
    listener = hl7_listener(ctx, loop_thread, host="127.0.0.1")
    try:
        (code, _, _), closed = mllp(listener.port, S.adt("L1"))
        assert code == "AA" and not closed
    finally:
        loop_thread.run(listener.stop())
        integration.SERVICES.__init__()


def test_hl7_peer_message_types_and_identity(ctx, hl7_open):
    p, session = patient_with_session(ctx)
    add_peer(ctx, name="RIS", kind="hl7", addresses="127.0.0.1/32",
             allowed=["ADT^A08", "ORU^R01"])
    # a type the peer may not send: AR, the connection stays usable
    (code, _, why), closed = mllp(hl7_open.port, S.orm("T1", "CT9"))
    assert code == "AR" and "not allowed" in why and not closed
    # an allowed ADT^A08 from a peer that is not the patient master: applied, but the
    # phone of a patient on record is ignored with a warning (the pentest's finding)
    (code, _, why), _ = mllp(hl7_open.port, S.adt("T2", phone=NEW_PHONE, trigger="A08"))
    assert code == "AA" and "only the patient master" in why
    assert phone_of() == "13800138000"
    with database.connection_context():
        assert Session.get_by_id(session.id).ended_at is None
    # the patient master may: the phone changes, the patient's sessions end, audited
    add_peer(ctx, name="HIS", kind="hl7", addresses="127.0.0.0/8", allowed="ADT",
             may_change_identity=True)
    with database.connection_context():
        from models.peers import IntegrationPeer
        IntegrationPeer.delete().where(IntegrationPeer.name == "RIS").execute()
    PEERS.forget()
    (code, _, _), _ = mllp(hl7_open.port, S.adt("T3", phone=NEW_PHONE, trigger="A08"))
    assert code == "AA" and phone_of() == NEW_PHONE
    with database.connection_context():
        assert Session.get_by_id(session.id).ended_at is not None
    [a] = audits("patient.identity_change")
    assert "138****8000" in a.detail and "139****9000" in a.detail
    assert NEW_PHONE not in a.detail and a.actor_id == "HIS"


def test_only_the_patient_master_merges_or_moves_exams(ctx):
    from models.integration import (CrossPatient, merge_patients, sent_by, upsert_order,
                                    upsert_patient)
    from models.schema import Exam
    with database.connection_context():
        for pid in ("PA", "PB"):
            upsert_patient(ctx.catalog, {"patient_id": pid})
        upsert_order(ctx.catalog, {"patient_id": "PA"}, {"accession": "X1"}, source="hl7")
        with sent_by("RIS", False):
            with pytest.raises(CrossPatient):
                merge_patients(ctx.catalog, {"patient_id": "PB"}, "PA")
            with pytest.raises(CrossPatient):
                upsert_order(ctx.catalog, {"patient_id": "PB"}, {"accession": "X1"},
                             source="hl7")
        assert Exam.get(Exam.accession_number == "X1").patient.patient_id == "PA"
        with sent_by("HIS", True):          # the patient master may
            merge_patients(ctx.catalog, {"patient_id": "PB"}, "PA")
        assert Exam.get(Exam.accession_number == "X1").patient.patient_id == "PB"


def test_identity_change_through_import_api_ends_sessions(ctx, live):
    p, session = patient_with_session(ctx)
    key = "k" * 24
    status, body = import_post(ctx, live, key, "patient", {
        "message_id": "m1", "patient": {"patient_id": "P1001", "phone": NEW_PHONE}})
    assert status == 200, body
    assert phone_of() == NEW_PHONE
    with database.connection_context():
        assert Session.get_by_id(session.id).ended_at is not None
    assert audits("patient.identity_change")


def import_post(ctx, live, key, kind, doc):
    from server import integration
    clients = tmp_clients(ctx, key)
    ctx.import_api = None
    ctx.config.set_base(import_api_clients_file=str(clients))
    integration.import_api_for(ctx)
    body = json.dumps(doc).encode()
    ts = str(int(time.time()))
    path = f"/api/import/v1/{kind}"
    sig = hmac.new(key.encode(), f"{ts}\nPOST\n{path}\n".encode() + body,
                   hashlib.sha256).hexdigest()
    status, _, out = live.request("POST", path, body, auth=False, headers={
        "X-CloudFilm-Client": "lis", "X-CloudFilm-Timestamp": ts,
        "X-CloudFilm-Signature": sig, "Content-Type": "application/json"})
    return status, json.loads(out)


def tmp_clients(ctx, key):
    f = ctx.config.path("data_dir") / "clients.toml"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(f'[clients]\nlis = "{key}"\n')
    return f


def test_import_api_refuses_unknown_address_when_not_on_loopback(ctx, live):
    ctx.config.set_base(host="0.0.0.0")          # as if served on the hospital network
    try:
        status, body = import_post(ctx, live, "k" * 24, "patient", {
            "message_id": "m2", "patient": {"patient_id": "P2002"}})
        assert status == 403 and "白名单" in body["error"], body
        assert audits("peer.refused")[0].detail.startswith("kind=import")
        add_peer(ctx, name="LIS", kind="import", addresses="127.0.0.1")
        status, body = import_post(ctx, live, "k" * 24, "patient", {
            "message_id": "m3", "patient": {"patient_id": "P2002"}})
        assert status == 200, body
    finally:
        ctx.config.set_base(host="127.0.0.1")


# DICOM ---------------------------------------------------------------------------------------
@pytest.fixture
def scp_open(ctx):
    from adapters.dicom_net import DicomScp
    from server.integration import peer_gate
    s = DicomScp(ctx.catalog, host="0.0.0.0", port=0, fast_copies=False,
                 gate=peer_gate(ctx, "dicom", "0.0.0.0")).start()
    yield s
    s.stop()


def store(port, ds, calling="MODALITY1", tls=None) -> int | None:
    """C-STORE one dataset; the status, or None when the association was rejected."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CLOUDFILM", tls_args=tls)
    if not assoc.is_established:
        return None
    try:
        st = assoc.send_c_store(ds)
        return int(st.Status)
    finally:
        assoc.release()


def test_dicom_unknown_ae_rejected_and_sop_classes_limited(ctx, scp_open):
    ds = F.ct_dataset(patient_id="P3003")
    assert store(scp_open.port, ds) is None
    [a] = audits("peer.refused")
    assert "ae_title=MODALITY1" in a.detail and a.ip == "127.0.0.1"
    add_peer(ctx, name="CT1", kind="dicom", ae_title="MODALITY1", addresses="127.0.0.1",
             allowed=[CTImageStorage])
    assert store(scp_open.port, ds) == 0x0000
    mr = F.ct_dataset(patient_id="P3003", study_uid=ds.StudyInstanceUID)
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = MRImageStorage
    assert store(scp_open.port, mr) == 0xA900
    # a known AE title from an address the peer does not list: rejected
    add_peer(ctx, name="CT1", kind="dicom", ae_title="MODALITY1", addresses="10.1.2.0/24")
    assert store(scp_open.port, ds) is None


def test_dicom_legacy_allowed_aets_still_admit(ctx):
    from adapters.dicom_net import DicomScp
    from server.integration import peer_gate
    s = DicomScp(ctx.catalog, host="0.0.0.0", port=0, fast_copies=False,
                 allowed_aets=["OLDCT"], gate=peer_gate(ctx, "dicom", "0.0.0.0", ["OLDCT"]))
    s.start()
    try:
        assert store(s.port, F.ct_dataset(patient_id="P4"), calling="OLDCT") == 0
        assert store(s.port, F.ct_dataset(patient_id="P4"), calling="OTHER") is None
    finally:
        s.stop()


def test_gate_rules_without_sockets():
    class Cache:
        def all(self):
            from models.peers import Peer
            import ipaddress
            return (Peer("HIS", "hl7", (ipaddress.ip_network("10.0.0.0/8"),),
                         allowed=("ADT",)),)
    g = Gate("hl7", loopback=False, cache=Cache())
    assert g.admit("10.1.1.1", what="ADT^A08").allowed
    assert not g.admit("10.1.1.1", what="ORU^R01").allowed
    assert not g.admit("192.168.1.1").allowed
    assert Gate("hl7", loopback=True, cache=Cache()).admit("192.168.1.1").allowed
    assert Gate("hl7", loopback=False, allow_unknown=True, cache=Cache()).admit("1.2.3.4").allowed


# administration ------------------------------------------------------------------------------
def test_admin_api_manages_peers_with_audit(ctx, live):
    h = staff_headers("sys1", ("sysadmin",))      # admins sign in; they hold no token

    def admin(method, path, body=None):
        return live.request(method, path, body, headers=h, auth=False)
    peer = {"name": "HIS", "kind": "hl7", "addresses": ["10.0.0.5/32"],
            "allowed": ["ADT^A08"], "may_change_identity": True, "charset": "GBK"}
    st, _, body = admin("POST", "/api/admin/peers", peer)
    assert st == 201, body
    st, _, body = admin("POST", "/api/admin/peers", {**peer, "enabled": False})
    assert st == 200
    st, _, body = admin("GET", "/api/admin/peers")
    [p] = json.loads(body)["peers"]
    assert p["addresses"] == ["10.0.0.5/32"] and p["enabled"] is False
    st, _, body = admin("POST", "/api/admin/peers", {**peer, "addresses": ["x"]})
    assert st == 400 and "CIDR" in json.loads(body)["error"]
    st, _, _ = admin("DELETE", "/api/admin/peers/HIS")
    assert st == 200
    st, _, _ = admin("DELETE", "/api/admin/peers/HIS")
    assert st == 404
    assert [a.action for a in audits("peer.create") + audits("peer.update")
            + audits("peer.delete")] == ["peer.create", "peer.update", "peer.delete"]
    # a doctor may not
    st, _, _ = live.request("GET", "/api/admin/peers")
    assert st == 403


def test_cli_peers(ctx, config):
    from tests.security.test_audit_cli_tls import cli
    r = cli(config, "peers", "add", "PACS1", "--kind", "dicom", "--ae-title", "PACS1",
            "--addresses", "10.0.0.0/24")
    assert r.returncode == 0, r.stderr
    r = cli(config, "peers", "disable", "PACS1")
    assert r.returncode == 0, r.stderr
    r = cli(config, "peers", "list", "--json")
    [p] = json.loads(r.stdout)
    assert p["ae_title"] == "PACS1" and p["enabled"] is False
    r = cli(config, "peers", "add", "BAD", "--kind", "dicom")
    assert r.returncode == 2 and "AE" in r.stderr
    assert cli(config, "peers", "remove", "PACS1").returncode == 0
    assert json.loads(cli(config, "peers", "list", "--json").stdout) == []
    assert len(audits("peer.create")) == 1 and len(audits("peer.delete")) == 1


# TLS -----------------------------------------------------------------------------------------
@pytest.fixture
def tls_pair(tmp_path):
    from server.tls import make_self_signed
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed(cert, key, hosts=["localhost", "127.0.0.1"], days=2)
    client = ssl.create_default_context(cafile=str(cert))
    client.check_hostname = False
    return cert, key, client


def test_mllp_over_tls(ctx, loop_thread, tls_pair):
    from server import integration
    cert, key, client = tls_pair
    ctx.config.set_base(hl7_tls_cert_file=str(cert), hl7_tls_key_file=str(key))
    listener = hl7_listener(ctx, loop_thread, host="127.0.0.1")
    try:
        (code, _, _), _ = mllp(listener.port, S.adt("S1"),
                               wrap=lambda s: client.wrap_socket(s))
        assert code == "AA"
        # plain MLLP to the TLS listener gets no ACK
        (code, _, _), _ = mllp(listener.port, S.adt("S2"))
        assert code == ""
    finally:
        loop_thread.run(listener.stop())
        integration.SERVICES.__init__()


def test_dicom_over_tls(ctx, tls_pair):
    from adapters.dicom_net import DicomScp
    from server.integration import listener_tls
    cert, key, client = tls_pair
    ctx.config.set_base(dicom_tls_cert_file=str(cert), dicom_tls_key_file=str(key))
    s = DicomScp(ctx.catalog, host="127.0.0.1", port=0, fast_copies=False,
                 ssl_context=listener_tls(ctx.config, "dicom")).start()
    try:
        assert store(s.port, F.ct_dataset(patient_id="P5"), tls=(client, None)) == 0
        assert store(s.port, F.ct_dataset(patient_id="P5")) is None
    finally:
        s.stop()
