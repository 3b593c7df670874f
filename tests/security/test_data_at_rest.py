"""Personal data at rest (issue 14 item 6).

A real HL7 ADT over MLLP (python-hl7's client) and real import-API requests carry a full
national ID number and a mobile phone; afterwards no table of the database (SQLite or
MariaDB) holds either in clear, and the SQLite file's bytes do not hold the ID number. The
system admin's CLI reveals a stored message (audited `inbound.reveal`), staff get the redacted
form, migration m0058 seals messages stored before it, and a server started under a
permissive umask leaves its files 0600/0700."""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from models import personal_data
from models.catalog import id_number_check_digit
from models.db import database, is_mysql, write_transaction
from models.schema import AuditEvent, InboundMessage
from server.config import ROOT
from tests.conftest import LiveServer
from tests.integration.conftest import LoopThread

from .test_audit_anchor import cli

pytestmark = pytest.mark.db

API_KEY = "k-his-0123456789abcdef"


def make_id(first17: str) -> str:
    return first17 + id_number_check_digit(first17)


HL7_ID, HL7_PHONE = make_id("44200019900101123"), "13912345678"
API_ID, API_PHONE = make_id("11010519800101456"), "13787654321"
BAD_ID, BAD_PHONE = make_id("32010219751231789"), "18611112222"   # in a refused message


@pytest.fixture
def peers(tmp_path, config):
    """The import API (one client) on a live server and the HL7 listener, one database."""
    from server import integration
    from tests.conftest import context_with_import_clients
    ctx = context_with_import_clients(tmp_path, config, {"his": API_KEY})
    srv = LiveServer(ctx)
    lt = LoopThread()
    listener = lt.run(integration.start_hl7(ctx, "127.0.0.1", 0))
    yield srv, listener.port
    lt.run(listener.stop())
    if integration.SERVICES.hl7_executor:
        integration.SERVICES.hl7_executor.shutdown(wait=True)
    integration.SERVICES.__init__()
    lt.stop()
    srv.stop()
    ctx.close()


def hl7_send(port: int, text: str) -> str:
    from hl7.client import MLLPClient
    with MLLPClient("127.0.0.1", port, encoding="utf-8") as c:
        return c.send_message(text).decode("utf-8")


def adt(ctrl: str, trigger: str, id_number: str, phone: str) -> str:
    return "\r".join([
        "MSH|^~\\&|HIS|ZSDFRMYY|CLOUDFILM|ZSDFRMYY|20261201101500||"
        f"ADT^{trigger}^ADT_{trigger}|{ctrl}|P|2.5||||||UNICODE UTF-8",
        f"EVN|{trigger}|20261201101500",
        f"PID|1||R900^^^ZSDFRMYY^PI||测试^患者||19900101|M|||中山市^^中山^广东||{phone}||||||"
        f"{id_number}",
        "PV1|1|O"]) + "\r"


def api_post(srv, kind: str, doc: dict):
    from adapters.import_api import sign
    body = json.dumps(doc, ensure_ascii=False).encode()
    ts = str(int(time.time()))
    path = f"/api/import/v1/{kind}"
    req = urllib.request.Request(srv.url + path, data=body, method="POST", headers={
        "Content-Type": "application/json", "X-CloudFilm-Client": "his",
        "X-CloudFilm-Timestamp": ts,
        "X-CloudFilm-Signature": sign(API_KEY.encode(), ts, "POST", path, body)})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def clear_values_in_tables(needles: list[str]) -> list[tuple]:
    """(table, column, needle) for every cell of every table holding a needle."""
    found = []
    with database.connection_context():
        for table in database.get_tables():
            cur = database.execute_sql(f"SELECT * FROM {table}")
            cols = [d[0] for d in cur.description]
            for row in cur.fetchall():
                for col, v in zip(cols, row):
                    if v is None:
                        continue
                    text = v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else str(v)
                    for n in needles:
                        if n in text:
                            found.append((table, col, n))
    return found


def sqlite_bytes(config) -> bytes:
    url = config.database_url
    if not url.startswith("sqlite:///"):
        return b""
    p = Path(url[len("sqlite:///"):])
    return b"".join(q.read_bytes() for q in (p, Path(str(p) + "-wal")) if q.exists())


def test_inbound_messages_hold_no_clear_id_or_phone(peers, config):
    srv, hl7_port = peers
    ack = hl7_send(hl7_port, adt("DR1", "A01", HL7_ID, HL7_PHONE))
    assert "MSA|AA|DR1" in ack, ack
    ack = hl7_send(hl7_port, adt("DR2", "Z99", BAD_ID, BAD_PHONE))     # refused: kept too
    assert "MSA|AR|DR2" in ack or "MSA|AE|DR2" in ack, ack
    st, a = api_post(srv, "patient", {"message_id": "dr-api-1", "patient": {
        "patient_id": "R901", "name": "测试", "sex": "F", "birth_date": "1980-01-01",
        "phone": API_PHONE, "id_number": API_ID}})
    assert st == 200 and a["outcome"] == "applied", a
    st, a = api_post(srv, "order", {"message_id": "dr-api-2", "patient": {
        "patient_id": "R902", "name": "测试", "phone": API_PHONE, "id_number": API_ID},
        "order": {"accession_number": "", "modality": "??"}})
    assert st >= 400 or a.get("outcome") != "applied", a                # a refused document

    with database.connection_context():
        rows = list(InboundMessage.select().order_by(InboundMessage.id))
    assert len(rows) == 4 and all(personal_data.is_sealed(m.raw) for m in rows)
    needles = [HL7_ID, API_ID, BAD_ID, HL7_PHONE, API_PHONE, BAD_PHONE]
    assert clear_values_in_tables(needles) == []
    blob = sqlite_bytes(config)
    for n in needles:
        assert n.encode() not in blob

    # staff get the redacted form; the system admin's CLI decrypts one message, audited
    first = rows[0]
    with database.connection_context():
        shown = personal_data.inbound_message(first.id)
    assert HL7_ID not in shown["raw"] and HL7_PHONE not in shown["raw"]
    assert HL7_ID[:4] + "*" * 10 + HL7_ID[-4:] in shown["raw"]
    assert "139****5678" in shown["raw"] and "MSH|" in shown["raw"]
    r = cli(config, "inbound", "show", str(first.id))
    assert r.returncode == 0, r.stderr
    assert HL7_ID in r.stdout and HL7_PHONE in r.stdout and "PID|1||R900" in r.stdout
    r = cli(config, "inbound", "show", str(first.id), "--redacted")
    assert r.returncode == 0 and HL7_ID not in r.stdout and "139****5678" in r.stdout
    with database.connection_context():
        reveals = list(AuditEvent.select().where(AuditEvent.action == "inbound.reveal"))
    assert [(e.object_id, e.actor_kind, e.outcome) for e in reveals] == [
        (str(first.id), "cli", "ok")]
    assert cli(config, "inbound", "show", "999999").returncode == 2
    # the audit of the reveal names no personal data either
    assert clear_values_in_tables(needles) == []


def test_patient_phone_sealed_yet_found_by_identity_checks_and_staff(peers):
    """patient.phone is stored sealed (deterministic AES-SIV): the identity checks, the
    staff search and the audited unmask still work with the clear phone."""
    from models import shares, staff
    from models.schema import Patient
    srv, hl7_port = peers
    assert "MSA|AA|DR9" in hl7_send(hl7_port, adt("DR9", "A01", HL7_ID, HL7_PHONE))
    with database.connection_context():
        stored = database.execute_sql("SELECT phone FROM patient WHERE patient_id = 'R900'"
                                      ).fetchone()[0]
        assert stored.startswith("cfp1:") and HL7_PHONE not in stored
        p = Patient.get(Patient.patient_id == "R900")
        assert p.phone == HL7_PHONE
        assert shares.patients_with_phone(HL7_PHONE) == [p.id]
        found = staff.search_patients(HL7_PHONE, srv.ctx.catalog.id_number_hash)
        assert [f["patient_id"] for f in found] == ["R900"]
        assert found[0]["phone"] == "139****5678"
    assert clear_values_in_tables([HL7_PHONE, HL7_ID]) == []


def test_sealed_message_is_bound_to_its_row(ctx):
    sealed = personal_data.seal("PID|1||X|||" + HL7_ID, "hl7", "C1")
    assert personal_data.unseal(sealed, "hl7", "C1").endswith(HL7_ID)
    with pytest.raises(personal_data.SealError):
        personal_data.unseal(sealed, "hl7", "C2")               # moved to another row
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(personal_data.SealError):
        personal_data.unseal(tampered, "hl7", "C1")


def test_migration_seals_messages_stored_before_it(ctx):
    from models.migrations import m0058_data_at_rest as m
    raw = adt("OLD1", "A01", HL7_ID, HL7_PHONE)
    with database.connection_context():
        InboundMessage.insert(channel="hl7", control_id="OLD1", message_type="ADT^A01",
                              raw=raw, outcome="error",
                              reason=f"bad phone {HL7_PHONE} for {HL7_ID}",
                              ack=f"MSA|AE|OLD1|{HL7_ID}").execute()
        InboundMessage.insert(channel="api:his", control_id="OLD2", message_type="patient",
                              raw=json.dumps({"id_number": API_ID}), outcome="applied",
                              ack="{}").execute()
        from models.schema import Patient
        Patient.create(patient_id="OLDP", name="旧", phone="x")
        database.execute_sql("UPDATE patient SET phone = '%s' WHERE patient_id = 'OLDP'"
                             % API_PHONE)                       # as stored before m0058
        assert Patient.get(Patient.patient_id == "OLDP").phone == API_PHONE   # still readable
        assert {t for t, _c, _n in clear_values_in_tables([HL7_ID, API_ID, API_PHONE])} == {
            "inbound_message", "patient"}
        if not is_mysql():      # the clear values are in the database file itself
            database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            assert API_ID.encode() in sqlite_bytes(ctx.config)
        with write_transaction():
            m.up(database)
        assert clear_values_in_tables([HL7_ID, API_ID, HL7_PHONE, API_PHONE]) == []
        assert Patient.get(Patient.phone == API_PHONE).patient_id == "OLDP"
        if not is_mysql():      # nor left in the file's free space once checkpointed
            database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            blob = sqlite_bytes(ctx.config)
            assert not [n for n in (HL7_ID, API_ID, HL7_PHONE, API_PHONE) if n.encode() in blob]
        old = InboundMessage.get(InboundMessage.control_id == "OLD1")
        assert personal_data.unseal(old.raw, "hl7", "OLD1") == raw
        first = old.raw
        with write_transaction():
            m.up(database)                                      # idempotent
        assert InboundMessage.get(InboundMessage.control_id == "OLD1").raw == first
        assert ctx.auditor.verify().ok                          # the head is signed


def test_redaction_masks_ids_and_phones():
    text = (f"PID|1||P1||张^三||||||||{HL7_PHONE}~+86 {API_PHONE}~(0760)22345678||||||"
            f"{HL7_ID.lower()}|440101800101123\rOBX|1|TX|||accession 2026120100001")
    out = personal_data.redact(text)
    for v in (HL7_PHONE, API_PHONE, "22345678", HL7_ID.lower(), "440101800101123"):
        assert v not in out
    assert "accession 2026120100001" in out                     # 13 digits: not an ID
    uid = "1.2.826.0.1.3680043.8.498.123456789012345678.13912345678"
    assert personal_data.redact(f"instance {uid} refused") == f"instance {uid} refused"
    assert personal_data.redact(f"ID {HL7_ID}.") == f"ID {HL7_ID[:4]}{'*' * 10}{HL7_ID[-4:]}."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_start_leaves_private_file_modes(tmp_path):
    """Under umask 022 (and files an older version left 0644), `serve` makes every file
    under its folders 0600 and every folder 0700."""
    if os.environ.get("CLOUDFILM_TEST_DB") == "mysql":
        pytest.skip("file modes of the SQLite deployment (MariaDB keeps its own files)")
    var = tmp_path / "var"
    (var / "data" / "old").mkdir(parents=True, mode=0o755)
    old = var / "data" / "old" / "study.dcm"
    old.write_bytes(b"x" * 10)
    old.chmod(0o644)
    key = var / "secret.key"
    key.write_text(os.urandom(32).hex())
    key.chmod(0o644)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLOUDFILM_PORT": str(port),
           "CLOUDFILM_DATABASE_URL": f"sqlite:///{var / 'cloudfilm.db'}",
           "CLOUDFILM_DATA_DIR": str(var / "data"), "CLOUDFILM_SECRET_KEY_FILE": str(key),
           "CLOUDFILM_DEMO_DATA": "false", "CLOUDFILM_RENDER_THREADS": "1",
           "CLOUDFILM_ADMIN_PASSWORD": "Admin-Pass-123"}
    env.pop("CLOUDFILM_TEST_DB", None)
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "--config",
                             str(tmp_path / "none.toml"), "serve", "--no-demo"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: os.umask(0o022))
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        # one audited action through the server: the database grows, files are written
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/auth/login", method="POST",
                                     data=b'{"username":"nobody","password":"x"}',
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=10)
        except urllib.error.HTTPError:
            pass
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    loose = []
    for p in [var / "data", *var.rglob("*")]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        if mode & 0o077:
            loose.append((str(p.relative_to(tmp_path)), oct(mode)))
    assert loose == []
    assert (var / "cloudfilm.db").exists() and stat.S_IMODE(old.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
