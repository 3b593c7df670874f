"""SIGTERM drains (issue 17, item 4): a stopping server takes no new connections and lets what
is in flight finish — a download being read slowly, a modality's C-STORE association — then
exits 0. Was: the process died at once, cutting the download and aborting the association."""
from __future__ import annotations

import http.client
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time

import pytest

from bench.lib.cloudfilm import CloudFilmServer, free_port
from tests.dicom_factory import ct_dataset, to_bytes

pytestmark = pytest.mark.slow

STUDY = "1.2.826.0.1.3680043.8.498.17400"


def _series(folder, n, size, series="1"):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        ds = ct_dataset(patient_id="GS1", study_uid=STUDY, series_uid=f"{STUDY}.{series}",
                        sop_uid=f"{STUDY}.{series}.{k + 1}", z=float(k), size=size)
        ds.InstanceNumber = k + 1
        (folder / f"{k:04d}.dcm").write_bytes(to_bytes(ds))
    return sorted(folder.iterdir())


@pytest.fixture
def server(tmp_path):
    dicom_port = free_port()
    srv = CloudFilmServer(tmp_path / "cf", processes=1, env={
        "CLOUDFILM_DICOM_SCP_ENABLED": "true", "CLOUDFILM_DICOM_PORT": str(dicom_port),
        "CLOUDFILM_SHUTDOWN_GRACE_S": "30", "CLOUDFILM_LOG_LEVEL": "INFO"})
    srv.dicom_port = dicom_port
    yield srv
    srv.stop()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except OSError:
        return True


def test_sigterm_lets_a_slow_download_and_a_c_store_finish(server, tmp_path):
    storescu = shutil.which("storescu")
    if not storescu:
        pytest.skip("dcmtk storescu missing (apt-get install dcmtk)")
    _series(tmp_path / "zip", 24, 512)
    server.import_paths([tmp_path / "zip"])
    token = server.provision_token()
    server.start()
    late = _series(tmp_path / "late", 300, 64, series="2")

    # a phone on a slow line downloading the exam ZIP (~12 MB), a few KB at a time
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", f"/api/download/studies/{STUDY}.zip",
                 headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()[:300]
    length = int(resp.getheader("Content-Length"))
    got = bytearray(resp.read(65536))

    # a modality sending 300 images on one association
    sent = {}

    def send():
        sent["out"] = subprocess.run(
            [storescu, "-aet", "MODALITY", "-aec", "CLOUDFILM", "-nh", "127.0.0.1",
             str(server.dicom_port), *map(str, late)], capture_output=True, text=True,
            timeout=120)
        sent["done"] = time.monotonic()
    t = threading.Thread(target=send)
    t.start()
    time.sleep(0.4)                              # the association is open and storing
    stopped = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)      # systemctl stop (KillMode=mixed)
    time.sleep(0.5)
    assert _refused(server.port)                 # no new HTTP connections …
    assert _refused(server.dicom_port)           # … nor associations
    while chunk := resp.read(65536):             # the download goes on to its end
        got += chunk
        time.sleep(0.01)
    assert len(got) == length and got[:2] == b"PK"
    t.join(120)
    assert sent["done"] > stopped                # the association was running at SIGTERM
    assert sent["out"].returncode == 0, sent["out"].stderr[-1500:]
    assert "Failed" not in sent["out"].stderr
    assert server.proc.wait(40) == 0             # then the server ends by itself
    log = (server.work / "server.log").read_text(errors="replace")
    assert "stopping: no new connections" in log and "stopped" in log
    assert "Traceback" not in log
    # nothing the modality got a success for is missing
    with sqlite3.connect(server.work / "db.sqlite") as db:
        stored = db.execute("SELECT count(*) FROM instance WHERE sop_uid LIKE ?",
                            (f"{STUDY}.2.%",)).fetchone()[0]
    assert stored == len(late)


def test_hl7_drain_answers_the_message_being_applied_and_closes_idle_connections():
    """The HL7 part of a SIGTERM: the message being applied is committed and ACKed, then its
    connection closes; a connection waiting between messages closes at once; no new ones."""
    import asyncio

    from adapters.hl7_mllp import MllpListener
    from tests.integration import hl7_samples as S
    from tests.integration.test_hl7 import read_answer

    applying = threading.Event()

    async def handle(message, error, code):
        applying.set()
        await asyncio.sleep(1.0)                 # a slow commit
        return b"MSH|^~\\&|CF||HIS||20260101||ACK|1|P|2.5\rMSA|AA|1\r"

    async def run():
        lst = await MllpListener(handle, "127.0.0.1", 0).start()
        loop = asyncio.get_running_loop()

        def busy_client():
            with socket.create_connection(("127.0.0.1", lst.port), timeout=20) as s:
                s.sendall(S.frame(S.adt("GS1")))
                ack = read_answer(s)
                rest = s.recv(10)                # then the server closes
                return ack, rest

        idle = socket.create_connection(("127.0.0.1", lst.port), timeout=20)
        busy = loop.run_in_executor(None, busy_client)
        await loop.run_in_executor(None, applying.wait, 10)
        cut = await lst.drain(10)
        ack, rest = await busy
        idle.settimeout(5)
        assert idle.recv(10) == b""              # the idle connection was closed
        idle.close()
        assert cut == 0 and b"MSA|AA" in ack and rest == b""
        assert _refused(lst.port)
    asyncio.run(run())
