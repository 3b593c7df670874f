"""Send to workstation: a doctor sends an exam (or one series) to a dicom_peers destination;
the outbox delivers it by C-STORE to dcmtk's storescp, retrying while the workstation is
down. Unknown destinations are refused, the front desk may not send, the audit names the
destination and the counts."""
from __future__ import annotations

import json
import subprocess
import time

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import corpus_files, staff_token
from tests.dicom_factory import ct_bytes

from .conftest import need
from .test_qr_scp import J2K, _free_port, _same, _wait_files

pytestmark = pytest.mark.db


@pytest.fixture
def peer_port():
    return _free_port()


@pytest.fixture
def config(tmp_path, database_url, peer_port):
    from server.config import load_config
    return load_config(path=tmp_path / "none.toml", env={}, overrides={
        "database_url": database_url, "data_dir": str(tmp_path / "data"),
        "secret_key_file": str(tmp_path / "secret.key"), "demo_data": False,
        "render_threads": 2, "dicom_peers": f"WS1=127.0.0.1:{peer_port},WS2=127.0.0.1:9"})


@pytest.fixture
def exam(ctx, tmp_path):
    """A CT study of two series (2 + 1 slices) and a JPEG 2000 corpus instance, stored;
    returns their originals by SOP Instance UID."""
    from adapters.dicom_net import InstanceSink
    sink = InstanceSink(ctx.catalog, fast_copies=False)
    study, series = generate_uid(), [generate_uid(), generate_uid()]
    files = {}
    for n, se in enumerate([series[0], series[0], series[1]]):
        sop = generate_uid()
        p = tmp_path / f"ct{n}.dcm"
        p.write_bytes(ct_bytes(patient_id="WS001", name="张^伟", charset="ISO_IR 192",
                               study_uid=study, series_uid=se, sop_uid=sop, z=float(n),
                               accession="ACC-WS1", study_date="20260312"))
        files[sop] = p
        assert sink.store(p.read_bytes(), "TEST") == 0
    j2k = next(f for f in corpus_files()
               if str(pydicom.dcmread(f, stop_before_pixels=True).file_meta
                      .TransferSyntaxUID) in J2K)
    assert sink.store(j2k.read_bytes(), "TEST") == 0
    return {"study": study, "series": series, "files": files, "j2k": j2k}


@pytest.fixture
def storescp(tmp_path, peer_port):
    procs = []

    def start():
        recv = tmp_path / "recv"
        recv.mkdir(exist_ok=True)
        p = subprocess.Popen([need("storescp"), "-aet", "WS1", "+xa", "-od", str(recv),
                              "-uf", str(peer_port)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        procs.append(p)
        from pynetdicom import AE
        end = time.time() + 10
        while time.time() < end:          # ready when it answers C-ECHO
            ae = AE()
            ae.add_requested_context("1.2.840.10008.1.1")
            a = ae.associate("127.0.0.1", peer_port, ae_title="WS1")
            if a.is_established:
                a.release()
                break
            time.sleep(0.1)
        return recv
    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


@pytest.fixture
def worker(loop_thread):
    from adapters.outbox import OutboxSettings, OutboxWorker
    w = OutboxWorker(OutboxSettings(max_attempts=3, backoff_s=1, backoff_max_s=1))

    def run():
        from models.schema import Outbox
        Outbox.update(next_attempt_at=Outbox.created_at).where(
            Outbox.status == "pending").execute()          # due now
        return loop_thread.run(w.run_once())
    return run


def _send(live, study, body):
    status, _, raw = live.request("POST", f"/api/staff/studies/{study}/send", body)
    return status, json.loads(raw)


def _jobs(live):
    status, out = live.json("/api/staff/sends")
    assert status == 200
    return out["jobs"]


def test_send_exam_and_series(live, exam, storescp, worker):
    recv = storescp()
    status, out = live.json("/api/staff/dicom-destinations")
    assert status == 200 and [d["name"] for d in out["destinations"]] == ["WS1", "WS2"]
    status, out = _send(live, exam["study"], {"destination": "WS1"})
    assert status == 202 and out["job"]["total"] == 3 and out["job"]["status"] == "pending"
    assert worker() == 1
    job = _jobs(live)[0]
    assert (job["status"], job["sent"], job["total"], job["failed"]) == ("done", 3, 3, 0)
    got = _wait_files(recv, 3)
    by_sop = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in got}
    assert set(by_sop) == set(exam["files"])
    for sop, orig in exam["files"].items():
        _same(by_sop[sop], orig)
    # one series; the newest job is listed first
    status, out = _send(live, exam["study"], {"destination": "WS1",
                                               "series_uid": exam["series"][1]})
    assert status == 202 and out["job"]["total"] == 1
    worker()
    jobs = _jobs(live)
    assert [j["id"] for j in jobs] == sorted((j["id"] for j in jobs), reverse=True)
    assert jobs[0]["series_uid"] == exam["series"][1] and jobs[0]["status"] == "done"
    # a compressed instance arrives as stored
    j2k = pydicom.dcmread(exam["j2k"], stop_before_pixels=True)
    status, out = _send(live, str(j2k.StudyInstanceUID), {"destination": "WS1"})
    assert status == 202
    worker()
    assert _jobs(live)[0]["status"] == "done"
    got = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f
           for f in _wait_files(recv, 5)}
    _same(got[str(j2k.SOPInstanceUID)], exam["j2k"])
    # audited: destination and counts, no patient data
    from models.schema import AuditEvent
    rows = list(AuditEvent.select().where(AuditEvent.action == "exam.send"))
    assert len(rows) == 3 and "destination=WS1" in rows[0].detail
    assert "instances=3" in rows[0].detail and "张" not in rows[0].detail
    assert "WS001" not in rows[0].detail


def test_destination_down_then_up(live, exam, storescp, worker):
    status, out = _send(live, exam["study"], {"destination": "WS1"})
    assert status == 202
    worker()
    job = _jobs(live)[0]
    assert job["status"] == "retrying" and job["sent"] == 0 and job["attempts"] == 1
    assert "WS1" in job["error"]
    recv = storescp()
    worker()
    job = _jobs(live)[0]
    assert (job["status"], job["sent"], job["total"]) == ("done", 3, 3)
    assert len(_wait_files(recv, 3)) == 3


def test_failed_instances_are_retried_alone(live, ctx, exam, storescp, worker):
    """An instance that cannot be read fails alone; the job retries only it and is done
    once it goes through."""
    from models.schema import Instance
    recv = storescp()
    sop = next(iter(exam["files"]))
    stored = ctx.storage.root / Instance.get(Instance.sop_uid == sop).file_path
    hidden = stored.with_name(stored.name + ".away")
    stored.rename(hidden)
    status, _ = _send(live, exam["study"], {"destination": "WS1"})
    assert status == 202
    worker()
    job = _jobs(live)[0]
    assert (job["status"], job["sent"], job["failed"], job["total"]) == ("retrying", 2, 1, 3)
    assert "1/3" in job["error"]
    assert len(_wait_files(recv, 2)) == 2
    hidden.rename(stored)
    worker()
    job = _jobs(live)[0]
    assert (job["status"], job["sent"], job["failed"]) == ("done", 3, 0)
    got = _wait_files(recv, 3)
    assert len(got) == 3          # the two sent before were not sent again
    assert sop in {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                   for f in got}


def test_progress_while_sending(ctx, exam, storescp, peer_port):
    """send_instances reports its progress as it goes (the page's progress line)."""
    from adapters.dicom_net import send_instances
    from models.sending import instances_to_send
    storescp()
    seen = []
    res = send_instances("127.0.0.1", peer_port, "WS1", instances_to_send(exam["study"]),
                         ctx.storage.read, on_progress=lambda r: seen.append(len(r.sent)),
                         progress_every_s=0)
    assert len(res.sent) == 3 and not res.failures and seen == [0, 1, 2]


def test_permanent_failure_shows_the_reason(live, exam, worker):
    status, _ = _send(live, exam["study"], {"destination": "WS2"})      # nobody on port 9
    assert status == 202
    for _ in range(3):
        worker()
    job = _jobs(live)[0]
    assert job["status"] == "failed" and job["attempts"] == 3 and job["error"]


def test_refusals(live, exam):
    status, out = _send(live, exam["study"], {"destination": "NOPE"})
    assert status == 400 and "目的地" in out["error"]
    status, out = _send(live, exam["study"], {"destination": "WS1",
                                               "series_uid": generate_uid()})
    assert status == 400
    status, out = _send(live, "1.2.3.4.5", {"destination": "WS1"})
    assert status == 404
    desk = staff_token("desk1", ("frontdesk",))
    for method, path, body in (("GET", "/api/staff/dicom-destinations", None),
                               ("GET", "/api/staff/sends", None),
                               ("POST", f"/api/staff/studies/{exam['study']}/send",
                                {"destination": "WS1"})):
        status, _, _ = live.request(method, path, body,
                                    headers={"Authorization": f"Bearer {desk}"})
        assert status == 403, path
    # another doctor does not see this doctor's jobs
    _send(live, exam["study"], {"destination": "WS1"})
    other = staff_token("doctor2", ("doctor",))
    status, _, raw = live.request("GET", "/api/staff/sends",
                                  headers={"Authorization": f"Bearer {other}"})
    assert status == 200 and json.loads(raw)["jobs"] == []
    assert len(_jobs(live)) == 1
