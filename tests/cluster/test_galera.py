"""The Galera fault test (issue 17, item 3): three mariadbd nodes in one Galera cluster on
this machine and two CloudFilm nodes on top (node A on database node 1, node B on database
node 2; node 3 only keeps the quorum), one storage folder and one secret key.

Load for about 15 s: C-STORE senders (pynetdicom), HL7 senders (MLLP, orders) and phones
opening one share (HTTP) alternate between the two CloudFilm nodes and, when their node fails
or does not answer with success, send the same thing again to the other one (as nginx or a
sender's failover would). During the load `kill -9` database node 1 (node A's database) and,
7 s later, CloudFilm node A itself.

Then, read from database node 3: every instance answered with success is stored exactly
once (one row by SOP Instance UID, the exam counters equal to the rows), every HL7 message
answered AA is applied exactly once (one inbound row by control ID, one exam by accession
number), every share open answered 200 is counted and the count equals the share's
sessions; no pause without any success longer than 20 s; node B still takes images and
messages.

Runs alone: `./run.sh test tests/cluster -m galera`."""
from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from adapters.hl7_codec import ack_code
from models import migrations
from bench.lib.cloudfilm import CloudFilmServer, free_port
from tests.dicom_factory import ct_bytes
from tests.integration import hl7_samples as S

from .galera import GaleraCluster, missing_tools

pytestmark = [pytest.mark.slow, pytest.mark.galera]

DB = "cloudfilm"


@pytest.fixture(scope="module")
def galera(tmp_path_factory):
    missing = missing_tools()
    if missing:
        pytest.fail(f"Galera test needs {', '.join(missing)}: apt-get install mariadb-server "
                    "galera-4 rsync (see .ci/run)")
    cluster = GaleraCluster(tmp_path_factory.mktemp("galera"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _node(tmp_path: Path, name: str, cluster: GaleraCluster, db_node: int,
          db: str = DB) -> CloudFilmServer:
    srv = CloudFilmServer(tmp_path / name, processes=1)
    srv.dicom_port, srv.hl7_port = free_port(), free_port()
    srv.extra.update({
        "CLOUDFILM_DATABASE_URL": cluster.url(db_node, db),
        "CLOUDFILM_DATA_DIR": str(tmp_path / "shared-data"),
        "CLOUDFILM_SECRET_KEY_FILE": str(tmp_path / "secret.key"),
        "CLOUDFILM_ADMIN_PASSWORD": "Galera-test-9x!",
        "CLOUDFILM_DICOM_SCP_ENABLED": "true", "CLOUDFILM_DICOM_PORT": str(srv.dicom_port),
        "CLOUDFILM_HL7_ENABLED": "true", "CLOUDFILM_HL7_PORT": str(srv.hl7_port),
        "CLOUDFILM_RENDER_THREADS": "1", "CLOUDFILM_PREDECODE_AFTER_IMPORT": "false",
        "CLOUDFILM_INTEGRITY_SCRUB_HOURS": "0",
    })
    return srv


def c_store(port: int, data: bytes) -> bool:
    """One association, one C-STORE: True only for a Success (0x0000) answer."""
    from pynetdicom import AE
    ds = pydicom.dcmread(__import__("io").BytesIO(data))
    ae = AE(ae_title="GALERASCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="CLOUDFILM")
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_store(ds)
        return bool(status) and status.Status == 0x0000
    finally:
        assoc.release()


def hl7(port: int, ctrl: str, text: str) -> bool:
    """Send one message on its own connection: True only for an AA echoing its control ID."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(S.frame(text))
        buf = b""
        while not buf.endswith(b"\x1c\r"):
            chunk = s.recv(65536)
            if not chunk:
                return False
            buf += chunk
    code, echoed, _ = ack_code(buf.strip(b"\x0b\x1c\r").decode())
    return code == "AA" and echoed == ctrl


class Load:
    """Senders that fail over: each item goes to one node, and on anything but success to
    the other, until one says success or the load's time is up."""

    def __init__(self, nodes: list[CloudFilmServer]):
        self.nodes = nodes
        self.stop = threading.Event()
        self.stored: list[str] = []           # SOP Instance UIDs answered Success
        self.acked: list[tuple[str, str]] = []  # (control ID, accession) answered AA
        self.opened = 0                       # share opens answered 200
        self.times: list[float] = []          # when each success came
        self.failovers = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def _deliver(self, send, start: int) -> bool:
        for attempt in range(12):
            node = self.nodes[(start + attempt) % len(self.nodes)]
            try:
                if send(node):
                    return True
            except Exception as exc:       # refused, reset, timed out: the next node
                with self.lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:120])
            with self.lock:
                self.failovers += 1
            time.sleep(0.2)
        return False

    def images(self, k: int, study: str) -> None:
        for i in itertools.count():
            if self.stop.is_set():
                return
            data = ct_bytes(study_uid=study, z=float(i + 1000 * k), patient_id="GAL",
                            size=64, pixel_value=i % 200)
            sop = pydicom.dcmread(__import__("io").BytesIO(data)).SOPInstanceUID
            if self._deliver(lambda n: c_store(n.dicom_port, data), k + i):
                with self.lock:
                    self.stored.append(sop)
                    self.times.append(time.monotonic())

    def opens(self, k: int, token: str, code: str) -> None:
        import requests

        def open_once(n):
            r = requests.post(n.base + "/api/share/open", json={"token": token, "code": code},
                              timeout=10)
            if r.status_code != 200 and r.status_code < 500:
                with self.lock:
                    self.errors.append(f"share open {r.status_code}: {r.text[:200]}")
            return r.status_code == 200
        for i in itertools.count():
            if self.stop.is_set():
                return
            if self._deliver(open_once, k + i):
                with self.lock:
                    self.opened += 1
                    self.times.append(time.monotonic())
            time.sleep(0.05)

    def messages(self, k: int) -> None:
        for i in itertools.count():
            if self.stop.is_set():
                return
            ctrl, acc = f"G{k}-{i}", f"GA{k}-{i}"
            text = S.orm(ctrl, acc, pid=f"GP{i % 5}")
            if self._deliver(lambda n: hl7(n.hl7_port, ctrl, text), k + i):
                with self.lock:
                    self.acked.append((ctrl, acc))
                    self.times.append(time.monotonic())


def test_two_nodes_start_together_on_an_empty_galera_database(galera, tmp_path):
    """Two CloudFilm nodes on two database nodes, released at once on an empty database:
    GET_LOCK is a lock of one Galera node only (MariaDB 10.11 grants it on both at once),
    so the migration lock on Galera is a row that only one node can commit."""
    nodes = [_node(tmp_path, f"n{i}", galera, i, "cf_together") for i in range(2)]
    errors: list[BaseException] = []

    def start(n):
        try:
            n.start()
        except BaseException as exc:
            errors.append(exc)
    threads = [threading.Thread(target=start, args=(n,)) for n in nodes]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not errors, errors
        conn = galera.nodes[2].connect("cf_together")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT version, COUNT(*) FROM schema_version GROUP BY version "
                            "HAVING COUNT(*) > 1")
                assert cur.fetchall() == ()
                cur.execute("SELECT COUNT(*) FROM schema_version")
                assert cur.fetchone()[0] == len(migrations.available())
        finally:
            conn.close()
    finally:
        for n in nodes:
            n.stop()


def test_migration_lock_row_is_waited_for_and_taken_over_when_expired(galera):
    """The Galera migration lock: a live row held through another database node makes a
    node wait (here: time out), a row its holder stopped renewing is taken over, and the
    row goes when the lock is released."""
    from models import db as dbmod
    from models.migrations import (LOCK_NAME, LOCK_ROW_TABLE, MigrationLockTimeout,
                                   migration_lock)
    old = dbmod.database.obj
    db = dbmod.connect(galera.url(1, "cf_lock"))
    other = galera.nodes[0].connect("cf_lock")
    name = f"{LOCK_NAME}.cf_lock"
    try:
        with migration_lock(timeout=1):     # creates the table; free: taken at once
            pass
        with other.cursor() as cur:
            cur.execute(f"INSERT INTO {LOCK_ROW_TABLE} VALUES (%s, 'node-x', "
                        "UTC_TIMESTAMP(6) + INTERVAL 60 SECOND)", (name,))
        t0 = time.monotonic()
        with pytest.raises(MigrationLockTimeout, match="still held"):
            with migration_lock(timeout=1.5):
                pytest.fail("took a lock held by another node")
        assert time.monotonic() - t0 >= 1.5
        with other.cursor() as cur:         # node-x died: its row is no longer renewed
            cur.execute(f"UPDATE {LOCK_ROW_TABLE} SET expires_at = UTC_TIMESTAMP(6) - "
                        "INTERVAL 1 SECOND WHERE name=%s", (name,))
        with migration_lock(timeout=5):
            with other.cursor() as cur:
                cur.execute(f"SELECT holder FROM {LOCK_ROW_TABLE} WHERE name=%s", (name,))
                assert cur.fetchone()[0] != "node-x"
        with other.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {LOCK_ROW_TABLE}")
            assert cur.fetchone()[0] == 0
    finally:
        db.close()
        other.close()
        if old is not None:
            dbmod.database.initialize(old)


def test_certification_failure_is_retried(galera):
    """A real certification conflict: a transaction on database node 2 updates a row that
    node 1 changes and commits meanwhile; node 2 answers the commit (or the next statement)
    with a deadlock error, and models.db.retrying runs the whole transaction again."""
    import peewee

    from models import db as dbmod
    setup = galera.nodes[0].connect()
    with setup.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS cf_cert")
        cur.execute("CREATE TABLE IF NOT EXISTS cf_cert.counter (id INT PRIMARY KEY, v INT)")
        cur.execute("REPLACE INTO cf_cert.counter VALUES (1, 0)")
    other = galera.nodes[0].connect("cf_cert")
    old = dbmod.database.obj
    db = dbmod.connect(galera.url(1, "cf_cert"))
    attempts = []

    def add_one():
        with dbmod.write_transaction():
            db.execute_sql("SELECT v FROM counter WHERE id=1").fetchone()   # wait for sync
            attempts.append(len(attempts) + 1)
            db.execute_sql("UPDATE counter SET v = v + 1 WHERE id = 1")
            if len(attempts) == 1:            # another node commits a change of that row
                with other.cursor() as cur:
                    cur.execute("UPDATE counter SET v = v + 10 WHERE id = 1")
                time.sleep(0.3)               # its write set reaches node 2
        return db.execute_sql("SELECT v FROM counter WHERE id=1").fetchone()[0]
    try:
        with pytest.raises(peewee.OperationalError) as failed:    # without a retry
            dbmod.retrying(add_one, attempts=1)
        assert failed.value.args[0] == 1213
        attempts.clear()
        assert dbmod.retrying(add_one) == 21    # 10 + 10 from node 1, 1 from the retried run
        assert attempts == [1, 2]
    finally:
        db.close()
        other.close()
        setup.close()
        if old is not None:
            dbmod.database.initialize(old)


@pytest.fixture
def two_nodes(galera, tmp_path):
    """CloudFilm node A on database node 1, B on database node 2 (stopped at the end)."""
    nodes = [_node(tmp_path, "a", galera, 0), _node(tmp_path, "b", galera, 1)]
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def test_galera_db_node_and_cloudfilm_node_killed_under_load(galera, two_nodes):
    t_start = time.monotonic()
    a, b = two_nodes
    a.start()                       # migrates the empty database
    b.start()
    import requests
    study = generate_uid()
    assert c_store(b.dicom_port, ct_bytes(study_uid=study, z=-1.0, patient_id="GAL", size=64))
    r = requests.post(b.base + "/api/shares", json={"study_uid": study, "max_opens": 1000},
                      headers={"Authorization": f"Bearer {b.provision_token()}"}, timeout=30)
    assert r.status_code == 201, r.text
    share_id, code = r.json()["share"]["id"], r.json()["code"]
    token = r.json()["url"].rsplit("/", 1)[1]
    load = Load([a, b])
    # both image senders store into one study of one patient and the HL7 senders share
    # five patients, two phones open one share, each sender on the other node than its
    # neighbour at the same moment: the same exam, patient and share rows (and the audit
    # chain's head) are written through two database nodes at once, so Galera's
    # certification fails some commits (deadlock errors, retried)
    threads = [threading.Thread(target=load.images, args=(k, study)) for k in range(2)]
    threads += [threading.Thread(target=load.opens, args=(k, token, code)) for k in range(2)]
    threads += [threading.Thread(target=load.messages, args=(k,)) for k in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(4)
        before_db_kill = (len(load.stored), len(load.acked))
        t_db_kill = time.monotonic()
        galera.nodes[0].kill9()         # node A's database
        time.sleep(7)
        before_node_kill = (len(load.stored), len(load.acked))
        t_node_kill = time.monotonic()
        os.killpg(a.proc.pid, 9)        # node A itself
        a.proc.wait(10)
        a.proc = None
        time.sleep(4)
    finally:
        load.stop.set()
        for t in threads:
            t.join(60)
    end = (len(load.stored), len(load.acked))
    assert before_db_kill[0] > 0 and before_db_kill[1] > 0, "no load before the kills"
    assert end[0] > before_node_kill[0] and end[1] > before_node_kill[1], \
        "no image or message acknowledged after both kills"
    galera.wait_size(2, 30, alive=galera.nodes[1:])

    # service continues on B: a new image and a new message
    extra = ct_bytes(study_uid=generate_uid(), patient_id="GALX", size=64)
    assert c_store(b.dicom_port, extra)
    assert hl7(b.hl7_port, "GX-1", S.orm("GX-1", "GAX-1", pid="GPX"))

    cert_failures = int(galera.nodes[1].status("wsrep_local_cert_failures")) + int(
        galera.nodes[2].status("wsrep_local_cert_failures"))
    conn = galera.nodes[2].connect(DB)       # read on the node nobody wrote through
    try:
        with conn.cursor() as cur:
            def one(sql, *args):
                cur.execute(sql, args)
                return cur.fetchone()[0]
            for sop in load.stored:
                assert one("SELECT COUNT(*) FROM instance WHERE sop_uid=%s", sop) == 1, sop
            # counters incremented once per stored instance: nothing applied twice
            cur.execute("SELECT e.study_uid, e.num_instances, COUNT(i.id) FROM exam e "
                        "JOIN series s ON s.exam_id=e.id JOIN instance i ON i.series_id=s.id "
                        "GROUP BY e.id, e.study_uid, e.num_instances")
            for study, counted, rows in cur.fetchall():
                assert counted == rows, (study, counted, rows)
            for ctrl, acc in load.acked:
                assert one("SELECT COUNT(*) FROM inbound_message WHERE channel='hl7' AND "
                           "control_id=%s AND outcome='applied'", ctrl) == 1, ctrl
                assert one("SELECT COUNT(*) FROM exam WHERE accession_number=%s", acc) == 1, acc
            assert one("SELECT COUNT(*) FROM instance") >= len(load.stored) + 2
            # every open answered 200 counted; each counted open has its session
            opens = one("SELECT opens FROM share WHERE id=%s", share_id)
            sessions = one("SELECT COUNT(*) FROM session WHERE share_id=%s", share_id)
            assert opens == sessions >= load.opened > 0, (opens, sessions, load.opened)
    finally:
        conn.close()
    times = sorted(load.times)
    gap = max(b_ - a_ for a_, b_ in zip(times, times[1:]))
    first_after = [round(next((t for t in times if t > k), float("nan")) - k, 1)
                   for k in (t_db_kill, t_node_kill)]
    assert gap < 20, f"no success for {gap:.1f} s"
    print(f"galera fault test: longest time without a success {gap:.1f} s, first success "
          f"{first_after[0]} s after the database kill, {first_after[1]} s after the node kill")
    assert not [e for e in load.errors if e.startswith("share open 4")], load.errors[:5]
    print(f"galera fault test: {len(load.stored)} images, {len(load.acked)} HL7 messages, "
          f"{load.opened} share opens ({opens} counted) acknowledged ({before_db_kill} before the database kill, {before_node_kill} before "
          f"the node kill), {load.failovers} fail-overs, {cert_failures} certification failures "
          f"on the surviving database nodes, {time.monotonic() - t_start:.0f} s")
