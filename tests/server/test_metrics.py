"""GET /metrics (Prometheus text format, server/metrics.py) and JSON log lines.

In-process live server (one process: prometheus_client's own registry), then one real
two-process server (multiprocess mode: one scrape counts both processes' requests)."""
import json
import logging
import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from adapters.importer import Importer
from tests.dicom_factory import ct_dataset, to_bytes

pytestmark = pytest.mark.db

STUDY, SERIES = "1.2.826.0.1.3680043.10.1373.77.1", "1.2.826.0.1.3680043.10.1373.77.2"
SOP = "1.2.826.0.1.3680043.10.1373.77.3.0"
FRAME = f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{SOP}/frames/1/rendered"
PATIENT = "MetricsPatient^Hidden"


def value(text: str, name: str, **labels) -> float:
    """The value of one sample (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pat = re.compile(rf"^{re.escape(name)}(\{{([^}}]*)\}})? ([0-9.e+-]+)$", re.M)
    for m in pat.finditer(text):
        got = m.group(2) or ""
        if all(f'{k}="{v}"' in got for k, v in labels.items()) or (not want and not got):
            return float(m.group(3))
    return 0.0


def scrape(live, headers=None):
    status, hdrs, body = live.get("/metrics", headers=headers, auth=False)
    return status, hdrs, body.decode()


@pytest.fixture
def image(catalog, tmp_path):
    ds = ct_dataset(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP, z=0.0, size=64)
    ds.PatientName = PATIENT
    ds.PixelData = np.full((64, 64), 1064, np.int16).tobytes()
    (tmp_path / "0.dcm").write_bytes(to_bytes(ds))
    Importer(catalog).run([tmp_path])


def test_metrics_text_format_and_request_histogram(live):
    status, hdrs, text = scrape(live)
    assert status == 200, text[:300]
    assert hdrs["Content-Type"].startswith("text/plain; version=0.0.4")
    before = value(text, "cloudfilm_http_request_duration_seconds_count", group="ops",
                   status="2xx")
    for _ in range(3):
        assert live.get("/healthz", auth=False)[0] == 200
    assert live.get("/api/studies")[0] == 200
    assert live.get("/no/such/route", auth=False)[0] == 404
    text = scrape(live)[2]
    # the scrape itself is counted when it finishes: at least the 3 liveness probes
    assert value(text, "cloudfilm_http_request_duration_seconds_count", group="ops",
                 status="2xx") >= before + 3
    assert value(text, "cloudfilm_http_request_duration_seconds_count", group="api",
                 status="2xx") >= 1
    assert value(text, "cloudfilm_http_request_duration_seconds_count", group="not_found",
                 status="4xx") >= 1
    assert value(text, "cloudfilm_http_request_duration_seconds_bucket", group="ops",
                 status="2xx", le="+Inf") >= before + 3
    assert value(text, "cloudfilm_db_wait_seconds_count", stage="connect") >= 1
    assert value(text, "cloudfilm_db_wait_seconds_count", stage="queue") >= 1
    assert value(text, "cloudfilm_database_up") == 1


def test_render_decode_and_cache_metrics_without_patient_data(live, image):
    text = scrape(live)[2]
    r0 = value(text, "cloudfilm_render_seconds_count", kind="frame")
    d0 = sum(value(text, "cloudfilm_decode_seconds_count", source=s)
             for s in ("fast_copy", "original", "worker"))
    m0 = value(text, "cloudfilm_cache_misses_total", cache="decoded")
    h0 = value(text, "cloudfilm_cache_hits_total", cache="decoded")
    assert live.get(FRAME + "?window=40,400")[0] == 200
    assert live.get(FRAME + "?window=50,400")[0] == 200     # pixels from the cache
    status, _, text = scrape(live)
    assert status == 200
    assert value(text, "cloudfilm_render_seconds_count", kind="frame") == r0 + 2
    assert sum(value(text, "cloudfilm_decode_seconds_count", source=s)
               for s in ("fast_copy", "original", "worker")) == d0 + 1
    assert value(text, "cloudfilm_cache_misses_total", cache="decoded") == m0 + 1
    assert value(text, "cloudfilm_cache_hits_total", cache="decoded") >= h0 + 1
    assert value(text, "cloudfilm_cache_bytes", cache="decoded") >= 64 * 64 * 2
    assert value(text, "cloudfilm_cache_max_bytes", cache="encoded") > 0
    assert value(text, "cloudfilm_http_request_duration_seconds_count", group="render",
                 status="2xx") >= 2
    for secret in (STUDY, SERIES, SOP, "MetricsPatient", "Hidden"):
        assert secret not in text


def test_outbox_inbound_and_lease_metrics(live, ctx):
    from models import leases
    from models.db import connection, write_transaction
    from models.integration import apply_inbound, enqueue
    with connection():
        with write_transaction():
            enqueue("hl7", "RIS", "metrics-test-1", {"x": 1})
            enqueue("hl7", "RIS", "metrics-test-2", {"x": 2})
        assert leases.acquire("outbox", leases.holder_id())
        assert leases.acquire("integrity_scrub", "elsewhere:1:abcd")
    text = scrape(live)[2]
    i0 = value(text, "cloudfilm_inbound_messages_total", channel="hl7", result="applied")
    d0 = value(text, "cloudfilm_inbound_messages_total", channel="hl7", result="duplicate")
    assert value(text, "cloudfilm_outbox_backlog", channel="hl7", status="pending") == 2
    assert value(text, "cloudfilm_outbox_oldest_pending_age_seconds") >= 0
    assert 'cloudfilm_lease_held{lease="outbox"} 1.0' in text
    assert 'cloudfilm_lease_held{lease="integrity_scrub"} 0.0' in text
    with connection():
        for _ in range(2):
            res = apply_inbound("hl7", "CTRL-METRICS-1", "ADT^A08", "MSH|...",
                                lambda: "noted", lambda outcome, note, issues: f"AA {outcome}")
    assert res.outcome == "duplicate"
    r0 = value(text, "cloudfilm_inbound_messages_total", channel="hl7", result="rejected")
    from models.integration import Unsupported, record_failure

    def unsupported():
        raise Unsupported("message type not handled")
    with connection():
        res = apply_inbound("hl7", "CTRL-METRICS-2", "ZZZ^Z01", "MSH|...", unsupported,
                            lambda outcome, note, issues: f"AR {outcome}")
        assert res.outcome == "rejected"          # recorded by record_failure: counted once
        record_failure("hl7", "CTRL-METRICS-3", "", "not HL7", "rejected", "unreadable", "AR")
    text = scrape(live)[2]
    assert value(text, "cloudfilm_inbound_messages_total", channel="hl7",
                 result="rejected") == r0 + 2
    assert value(text, "cloudfilm_inbound_messages_total", channel="hl7",
                 result="applied") == i0 + 1
    assert value(text, "cloudfilm_inbound_messages_total", channel="hl7",
                 result="duplicate") == d0 + 1
    assert "CTRL-METRICS-1" not in text


def test_metrics_refused_outside_loopback_and_admin_allow_list(live, ctx):
    # a proxy we do not trust forwarded it: the real client is unknown
    assert scrape(live, {"X-Forwarded-For": "203.0.113.5"})[0] == 403
    assert scrape(live, {"X-Real-IP": "127.0.0.1"})[0] == 403
    ctx.config.set_base(trusted_proxies="127.0.0.1/32")
    # through a trusted proxy: the client's address decides
    status, _, body = scrape(live, {"X-Forwarded-For": "203.0.113.5"})
    assert status == 403 and "allow-list" in body
    assert scrape(live, {"X-Forwarded-For": "10.1.2.3"})[0] == 200      # admin allow-list
    # a staff token does not open it from outside either
    assert live.get("/metrics", headers={"X-Forwarded-For": "203.0.113.5"})[0] == 403


def test_json_log_lines_keep_masking(live):
    """log_format = "json": one JSON object a line; a share token in a path stays masked."""
    from server.logjson import JsonFormatter
    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))
    handler = Keep()
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("tornado.access")
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    token = "SecretShareToken0123456789abcdef"
    try:
        live.get(f"/s/{token}?code=123456", auth=False)
        live.get("/healthz", auth=False)
        time.sleep(0.3)           # the access line is written after the answer is sent
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    assert len(lines) >= 2
    objs = [json.loads(line) for line in lines]
    assert all("\n" not in line for line in lines)
    share = next(o for o in objs if o.get("path", "").startswith("/s/"))
    assert share["path"] == "/s/***" and "/s/***" in share["message"]
    assert share["group"] == "share" and share["level"] in ("INFO", "WARNING")
    assert {"time", "level", "logger", "message", "status", "ms", "method"} <= set(share)
    health = next(o for o in objs if o.get("path") == "/healthz")
    assert health["group"] == "ops" and health["status"] == 200
    assert token not in "\n".join(lines) and "123456" not in "\n".join(lines)


def test_json_formatter_exception_and_plain_lines():
    from server.logjson import JsonFormatter
    rec = logging.LogRecord("cloudfilm", logging.ERROR, __file__, 1, "failed %s", ("x",), None)
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        rec.exc_info = sys.exc_info()
    out = json.loads(JsonFormatter().format(rec))
    assert out["message"] == "failed x" and out["level"] == "ERROR"
    assert "ValueError: boom" in out["exc"] and out["time"].endswith("Z")


def test_two_processes_one_scrape(tmp_path):
    """processes = 2 (SO_REUSEPORT): every process's requests appear in one scrape, and the
    metrics folder of a previous run is emptied at start."""
    from bench.lib.cloudfilm import CloudFilmServer
    srv = CloudFilmServer(tmp_path / "two", processes=2,
                          env={"CLOUDFILM_DECODE_PROCESSES": "1", "CLOUDFILM_LOG_FORMAT": "json",
                               "CLOUDFILM_LOG_LEVEL": "INFO"})
    import socket
    folder = tmp_path / "two" / "metrics" / f"{socket.gethostname()[:40]}-{srv.port}"
    folder.mkdir(parents=True)
    stale = folder / "counter_999999.db"
    stale.write_bytes(b"left by a killed run")
    srv.start()
    try:
        def pids():
            return {int(m.group(1)) for m in (re.match(r"histogram_(\d+)\.db$", p.name)
                                              for p in folder.iterdir()) if m}
        # new connections until both processes have answered some (the second one may
        # still be warming up when the first answers)
        n, deadline = 0, time.monotonic() + 30
        while n < 40 or (len(pids()) < 2 and time.monotonic() < deadline):
            with urllib.request.urlopen(srv.base + "/healthz", timeout=10) as r:
                assert r.status == 200
            n += 1
        assert len(pids()) >= 2 and not stale.exists(), sorted(p.name for p in folder.iterdir())
        with urllib.request.urlopen(srv.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        count = value(text, "cloudfilm_http_request_duration_seconds_count", group="ops",
                      status="2xx")
        assert count >= n, (count, n)    # start-up probes of the harness add a few
        assert value(text, "cloudfilm_database_up") == 1
        assert value(text, "cloudfilm_cache_max_bytes", cache="decoded") >= 1024 << 20
    finally:
        srv.stop()
    log = (tmp_path / "two" / "server.log").read_text(errors="replace").splitlines()
    access = [json.loads(line) for line in log if line.startswith("{")
              and '"tornado.access"' in line]
    assert access and all(a["path"] in ("/healthz", "/metrics") for a in access)
