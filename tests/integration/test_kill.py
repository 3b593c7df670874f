"""The kill test: while storescu (dcmtk) sends 200 files and a sender pushes 1,000 HL7
messages, `kill -9` the server and start it again. Every instance answered with success is
present with its original SHA-256 and content, every message answered AA is applied exactly
once, and the outbox resumes and delivers everything."""
from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from adapters.hl7_codec import ack_code
from tests.dicom_factory import ct_bytes

from . import hl7_samples as S
from .conftest import need
from .test_import_outbox import Receiver

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp: Path, receiver_port: int):
        self.tmp = tmp
        self.http, self.dicom, self.hl7 = free_port(), free_port(), free_port()
        self.conf = tmp / "cloudfilm.toml"
        self.conf.write_text("\n".join([
            f'port = {self.http}', f'database_url = "sqlite:///{tmp}/cf.db"',
            f'data_dir = "{tmp}/data"', f'secret_key_file = "{tmp}/secret.key"',
            "demo_data = false", "processes = 1", "render_threads = 1",
            "dicom_scp_enabled = true", f"dicom_port = {self.dicom}",
            'dicom_allowed_aets = "STORESCU"', "hl7_enabled = true", f"hl7_port = {self.hl7}",
            f'hl7_receivers = "127.0.0.1:{receiver_port}"', "outbox_backoff_s = 1",
            "outbox_backoff_max_s = 2", "predecode_after_import = false",
            'log_level = "WARNING"']))
        self.proc = None

    def start(self):
        env = dict(os.environ, PYTHONPATH=str(ROOT), CLOUDFILM_ADMIN_PASSWORD="Kill-test-9x!")
        self.log = open(self.tmp / "server.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "--config",
                                     str(self.conf), "serve", "--no-demo"], cwd=ROOT, env=env,
                                    stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.hl7), 0.5).close()
                socket.create_connection(("127.0.0.1", self.dicom), 0.5).close()
                return
            except OSError:
                assert self.proc.poll() is None, (self.tmp / "server.log").read_text()[-3000:]
                time.sleep(0.1)
        raise AssertionError("server did not start")

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.log.close()


def hl7_messages(n=1000):
    msgs = []
    for i in range(n):
        if i % 10 == 9:     # a final report for the order before: queues an outbound notice
            # (the order's own patient: a report naming another one is refused, issue 14)
            msgs.append((f"K{i}", S.oru(f"K{i}", f"KA{i - 1}", pid=f"KP{(i - 1) % 50}")))
        else:
            msgs.append((f"K{i}", S.orm(f"K{i}", f"KA{i}", pid=f"KP{i % 50}")))
    return msgs


def send_all(port, msgs, acked, stop_on_error=True):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            for ctrl, text in msgs:
                s.sendall(S.frame(text))
                buf = b""
                while not buf.endswith(b"\x1c\r"):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed")
                    buf += chunk
                code, echoed, _ = ack_code(buf.strip(b"\x0b\x1c\r").decode())
                assert echoed == ctrl
                acked[ctrl] = code
    except (OSError, ConnectionError):
        if not stop_on_error:
            raise


def test_kill9_during_storescu_and_hl7(tmp_path, loop_thread):
    rec = Receiver(loop_thread)
    files_dir = tmp_path / "files"
    files_dir.mkdir()
    study = generate_uid()
    files = []
    for i in range(200):
        p = files_dir / f"{i:03d}.dcm"
        p.write_bytes(ct_bytes(study_uid=study, z=float(i), patient_id="KILL", size=256,
                               pixel_value=i))
        files.append(p)
    srv = Server(tmp_path, rec.port)
    srv.start()
    try:
        msgs = hl7_messages()
        acked: dict[str, str] = {}
        sender = threading.Thread(target=send_all, args=(srv.hl7, msgs, acked))
        scu = subprocess.Popen([need("storescu"), "-v", "-aet", "STORESCU", "-aec", "CLOUDFILM",
                                "127.0.0.1", str(srv.dicom), *map(str, files)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sender.start()
        t0 = time.monotonic()
        while len(acked) < 250 and time.monotonic() - t0 < 30:
            time.sleep(0.01)
        srv.kill9()
        scu_out = scu.communicate(timeout=60)[0]
        sender.join(30)
        # success answers storescu saw before the kill
        ok_files, current = [], None
        for line in scu_out.splitlines():
            m = re.search(r"Sending file: (.+)$", line)
            if m:
                current = m.group(1).strip()
            elif "Received Store Response (Success)" in line and current:
                ok_files.append(current)
        assert 0 < len(acked) < len(msgs), "the kill should land in the middle of HL7"
        assert all(code == "AA" for code in acked.values())

        srv.start()                                   # restart: nothing manual
        from models import db as dbmod
        from models.schema import Exam, InboundMessage, Instance, Outbox
        dbmod.connect(f"sqlite:///{tmp_path}/cf.db")
        try:
            # every instance answered with success: present, original SHA-256 and content
            for f in ok_files:
                sent = pydicom.dcmread(f)
                inst = Instance.get(Instance.sop_uid == sent.SOPInstanceUID)
                on_disk = (tmp_path / "data" / inst.file_path).read_bytes()
                assert hashlib.sha256(on_disk).hexdigest() == inst.sha256
                stored = pydicom.dcmread(io.BytesIO(on_disk))
                assert stored.PixelData == sent.PixelData
                assert stored == sent                  # every element as sent
            # every message answered AA is applied, exactly once
            for ctrl in acked:
                m = InboundMessage.get((InboundMessage.channel == "hl7")
                                       & (InboundMessage.control_id == ctrl))
                assert m.outcome == "applied"
            # the sender retries everything (also what was acknowledged): no double apply
            again: dict[str, str] = {}
            send_all(srv.hl7, msgs, again, stop_on_error=False)
            assert len(again) == len(msgs) and set(again.values()) == {"AA"}
            assert Exam.select().where(Exam.accession_number.startswith("KA")).count() == 900
            assert InboundMessage.select().where(InboundMessage.channel == "hl7").count() == 1000
            # the outbox resumes: every notice delivered
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                pending = Outbox.select().where(Outbox.status != "sent").count()
                if pending == 0:
                    break
                time.sleep(0.2)
            assert Outbox.select().count() == 100
            assert Outbox.select().where(Outbox.status != "sent").count() == 0
            got = {t.split("\r")[0].split("|")[9] for t in rec.received}
            assert len(got) == 100                     # at least once each (maybe twice)
            # storescu again: everything not yet stored arrives, the rest is a no-op
            out = subprocess.run([need("storescu"), "-aet", "STORESCU", "-aec", "CLOUDFILM",
                                  "127.0.0.1", str(srv.dicom), *map(str, files)],
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr[-2000:]
            assert Instance.select().count() == 200
            print(f"kill test: {len(ok_files)} instances and {len(acked)} HL7 messages "
                  f"acknowledged before kill -9")
        finally:
            dbmod.database.close()
    finally:
        srv.stop()
        rec.close()
