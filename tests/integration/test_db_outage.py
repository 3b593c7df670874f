"""Issue 17 (faults degrade): the MariaDB server goes away under a running CloudFilm and comes
back. The test runs its own mariadbd (own datadir, port, socket) and a real server process on
it; the adversary is the database: killed (down) and later stopped with SIGSTOP (hanging).

During the outage: API requests answer 503 with Retry-After and the one JSON error shape (not
500); a frame already in the encoded-image cache whose access was checked within the access
cache's lifetime is still served; the log has one line for the outage, not a traceback per
request; an HL7 ADT is answered AE (temporary failure) on a connection that stays usable.
After mariadbd returns on the same datadir and port, requests succeed again within seconds
without restarting CloudFilm, and the HL7 message resent is applied (AA)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from adapters.hl7_codec import ack_code

from . import hl7_samples as S

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from lib.cloudfilm import CloudFilmServer, free_port  # noqa: E402

MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (Path(MARIADBD).exists() and Path(INSTALL_DB).exists()),
                                 reason="needs mariadbd and mariadb-install-db")]


class Mariadbd:
    """A throwaway mariadbd on 127.0.0.1 (no grant tables) in a folder of the test."""

    def __init__(self, work: Path):
        self.work = work
        self.datadir = work / "datadir"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def install(self) -> None:
        r = subprocess.run([INSTALL_DB, "--no-defaults", f"--datadir={self.datadir}",
                            "--auth-root-authentication-method=normal", "--skip-test-db",
                            "--user=root"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-1500:]

    def start(self) -> None:
        log = open(self.work / "mariadbd.log", "ab")
        self.proc = subprocess.Popen([
            MARIADBD, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
            "--bind-address=127.0.0.1", f"--socket={self.work / 'mysqld.sock'}",
            f"--pid-file={self.work / 'mysqld.pid'}", "--skip-grant-tables",
            "--skip-name-resolve", "--innodb-buffer-pool-size=16M", "--user=root",
            "--innodb-log-file-size=16M", "--max-connections=200"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        end = time.monotonic() + 60
        while time.monotonic() < end:
            assert self.proc.poll() is None, (self.work / "mariadbd.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("mariadbd did not open its port within 60 s")

    def kill(self) -> None:
        """Down at once (a crash, or a network cut that refuses connections)."""
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def request(base: str, path: str, token: str, timeout: float = 30) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}",
                                                       "Accept": "application/json, image/jpeg"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class Mllp:
    """One MLLP connection kept open across messages (a HIS interface engine's)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)

    def send(self, text: str) -> tuple[str, str, str]:
        self.sock.sendall(S.frame(text))
        buf = b""
        while not buf.endswith(b"\x1c\r"):
            chunk = self.sock.recv(65536)
            assert chunk, "the listener closed the connection instead of answering"
            buf += chunk
        return ack_code(buf.strip(b"\x0b\x1c\r").decode("utf-8", errors="replace"))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def stack(tmp_path):
    db = Mariadbd(tmp_path / "mariadb")
    db.work.mkdir()
    db.install()
    db.start()
    hl7_port = free_port()
    cf = CloudFilmServer(tmp_path / "cf", processes=1, env={
        "CLOUDFILM_DATABASE_URL": f"mysql://root@127.0.0.1:{db.port}/cf",
        "CLOUDFILM_LOG_LEVEL": "INFO",
        "CLOUDFILM_HL7_ENABLED": "true",
        "CLOUDFILM_HL7_PORT": str(hl7_port),
    })
    cf.hl7_port = hl7_port
    try:
        yield db, cf
    finally:
        cf.stop()
        db.stop()


def test_mariadb_down_then_back(stack, tmp_path):
    db, cf = stack
    from tests.dicom_factory import ct_bytes
    from pydicom.uid import generate_uid
    study, series = generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(3)]
    src = tmp_path / "series"
    src.mkdir()
    for i, sop in enumerate(sops):
        (src / f"{i}.dcm").write_bytes(ct_bytes(study_uid=study, series_uid=series, sop_uid=sop,
                                                z=float(i), size=64, accession="OUT1"))
    cf.import_paths([str(src)])
    token = cf.provision_token()
    assert token
    cf.start()
    base = cf.base
    frame = f"/dicomweb/studies/{study}/series/{series}/instances/{sops[1]}/frames/1/rendered"
    status, _, jpeg = request(base, frame, token)
    assert status == 200 and jpeg[:2] == b"\xff\xd8"
    api = f"/api/studies/{study}"
    status, _, _ = request(base, api, token)
    assert status == 200, api
    hl7 = Mllp(cf.hl7_port)
    assert hl7.send(S.adt("OUT-ADT-0", pid="P1700"))[0] == "AA"
    log_before = (cf.work / "server.log").stat().st_size

    # --- down: mariadbd killed ------------------------------------------------------------
    request(base, frame, token)              # access facts fresh (checked within 1 s)
    db.kill()
    t_down = time.monotonic()
    status, _, body = request(base, frame, token)
    fresh = time.monotonic() - t_down < 0.9
    print(f"\ncached frame {time.monotonic() - t_down:.2f} s into the outage: {status}")
    if fresh:
        # the cached frame, its access checked within the access caches' lifetime (1 s)
        assert status == 200 and body == jpeg
    time.sleep(1.2)                          # past the access caches' lifetime
    counts: dict[int, int] = {}
    answers = []
    for _ in range(10):
        for path in (api, frame, f"/dicomweb/studies/{study}/series"):
            status, headers, body = request(base, path, token)
            counts[status] = counts.get(status, 0) + 1
            answers.append((path, status, headers, body))
    log = (cf.work / "server.log").read_bytes()[log_before:].decode("utf-8", "replace")
    print(f"\nduring the outage: {counts}, {log.count('Traceback')} tracebacks in the log")
    assert counts.get(500, 0) == 0 and counts.get(503, 0) >= 20, counts
    for path, status, headers, body in answers:
        if status != 200:
            assert status == 503, (path, status, body[:300])
            assert int(headers.get("Retry-After", "0")) >= 1
            err = json.loads(body)
            assert err["ok"] is False and err["status"] == 503
            assert "数据库" in err["error"] and "database" in err["error"]
    ack, _, text = hl7.send(S.adt("OUT-ADT-1", pid="P1701"))
    assert ack in ("AE", "AR"), text
    assert "retry" in text.lower() or "重试" in text
    # the connection stays usable: a second message on it gets an answer too
    assert hl7.send(S.adt("OUT-ADT-2", pid="P1702"))[0] in ("AE", "AR")

    time.sleep(3)
    log = (cf.work / "server.log").read_bytes()[log_before:].decode("utf-8", "replace")
    assert "Traceback" not in log, log[-3000:]
    outage_lines = [ln for ln in log.splitlines() if "database unavailable" in ln]
    assert len(outage_lines) == 1, log[-3000:]

    # --- back: same datadir and port -------------------------------------------------------
    db.start()
    t_back = time.monotonic()
    recovered = None
    while time.monotonic() - t_back < 30:
        if request(base, api, token)[0] == 200:
            recovered = time.monotonic() - t_back
            break
        time.sleep(0.2)
    assert recovered is not None and recovered < 10, "requests did not recover within 10 s"
    print(f"recovered {recovered:.2f} s after mariadbd opened its port")
    # every pooled connection was dead: none of them may fail a request now
    for _ in range(30):
        for path in (api, frame):
            status, _, body = request(base, path, token)
            assert status == 200, (path, status, body[:300])
    assert hl7.send(S.adt("OUT-ADT-1", pid="P1701"))[0] == "AA"
    assert hl7.send(S.adt("OUT-ADT-2", pid="P1702"))[0] == "AA"
    hl7.close()
    log = (cf.work / "server.log").read_bytes()[log_before:].decode("utf-8", "replace")
    assert sum("database available again" in ln for ln in log.splitlines()) == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    # nothing acknowledged AA is lost
    import pymysql
    conn = pymysql.connect(host="127.0.0.1", port=db.port, user="root", database="cf")
    with conn.cursor() as cur:
        cur.execute("SELECT control_id FROM inbound_message WHERE outcome='applied'")
        applied = {r[0] for r in cur.fetchall()}
    conn.close()
    assert {"OUT-ADT-0", "OUT-ADT-1", "OUT-ADT-2"} <= applied

    # --- hanging: mariadbd stopped (SIGSTOP) -----------------------------------------------
    os.kill(db.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(1.2)
        t0 = time.monotonic()
        status, headers, body = request(base, api, token, timeout=60)
        waited = time.monotonic() - t0
        assert status == 503, (status, body[:300])
        assert waited < 20, f"a hanging database held the request {waited:.1f} s"
        # while it hangs, the next requests do not each wait: one probe at a time
        t1 = time.monotonic()
        for _ in range(10):
            assert request(base, api, token, timeout=60)[0] == 503
        print(f"hanging database: first 503 after {waited:.1f} s, "
              f"then 10 more in {time.monotonic() - t1:.2f} s")
    finally:
        os.kill(db.proc.pid, signal.SIGCONT)
    t_back = time.monotonic()
    while time.monotonic() - t_back < 30:
        if request(base, api, token)[0] == 200:
            break
        time.sleep(0.2)
    else:
        pytest.fail("requests did not recover after SIGCONT")
