"""`./run.sh audit verify` names the first edited or missing record; CSV export for the audit
admin; TLS served by Tornado with HSTS; `make-cert`; the non-loopback rule."""
import csv
import io
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from models.audit import drop_append_only_triggers, install_append_only_triggers
from models.db import database, write_transaction
from models.schema import AuditEvent
from server.config import ConfigError, load_config
from tests.conftest import ROOT, staff_headers


def cli(config, *args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               CLOUDFILM_DATABASE_URL=config.database_url,
               CLOUDFILM_DATA_DIR=str(config.path("data_dir")),
               CLOUDFILM_SECRET_KEY_FILE=str(config.path("secret_key_file")),
               CLOUDFILM_DEMO_DATA="false")
    env.pop("CLOUDFILM_TEST_DB", None)
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.db
def test_audit_verify_names_first_edited_and_missing_record(ctx, config):
    for i in range(6):
        ctx.auditor.record("test.event", actor_kind="staff", actor_id=f"u{i}", detail=str(i))
    r = cli(config, "audit", "verify")
    assert r.returncode == 0 and "6 records verified" in r.stdout, r.stderr
    # the application itself cannot edit or delete
    with pytest.raises(Exception):
        with write_transaction():
            AuditEvent.update(detail="x").where(AuditEvent.id == 3).execute()
    # someone with database rights drops the triggers and edits record 3 by hand
    drop_append_only_triggers()
    database.execute_sql("UPDATE audit_event SET actor_id = 'mallory' WHERE id = 3")
    r = cli(config, "audit", "verify")
    assert r.returncode == 1 and "record 3 was edited" in r.stderr, (r.stdout, r.stderr)
    # put it back, delete record 5 instead
    database.execute_sql("UPDATE audit_event SET actor_id = 'u2' WHERE id = 3")
    assert cli(config, "audit", "verify").returncode == 0
    database.execute_sql("DELETE FROM audit_event WHERE id = 5")
    r = cli(config, "audit", "verify")
    assert r.returncode == 1 and "record 5 is missing" in r.stderr
    # deleting the newest record is caught by the chain head
    database.execute_sql("DELETE FROM audit_event WHERE id >= 5")
    r = cli(config, "audit", "verify")
    assert r.returncode == 1 and "after 4 are missing" in r.stderr
    install_append_only_triggers()


@pytest.mark.db
def test_audit_csv_export_for_audit_admin_only(live, ctx):
    ctx.auditor.record("login", actor_kind="staff", actor_id="doc", ip="10.1.2.3",
                       outcome="fail", detail="wrong password")
    aud = staff_headers("aud1", ("auditadmin",))        # admins sign in; no API token
    st, hdrs, body = live.get("/api/admin/audit.csv", headers=aud, auth=False)
    assert st == 200 and hdrs["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    assert rows[0][:4] == ["time", "actor_kind", "actor_id", "ip"]
    assert any(r[2] == "doc" and r[3] == "10.1.2.3" and r[7] == "fail" for r in rows[1:])
    assert live.get("/api/admin/audit.csv")[0] == 403       # a doctor
    st, _, body = live.get("/api/admin/audit/verify", headers=aud, auth=False)
    assert st == 200 and b'"intact": true' in body
    # the export itself is audited
    with database.connection_context():
        assert AuditEvent.select().where(AuditEvent.action == "audit.export").exists()
    r = cli(ctx.config, "audit", "export")
    assert r.returncode == 0 and "wrong password" in r.stdout


def test_non_loopback_needs_tls_or_explicit_plain_http(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(path=tmp_path / "x.toml", env={}, overrides={"host": "0.0.0.0"})
    assert "TLS" in str(e.value)
    c = load_config(path=tmp_path / "x.toml", env={},
                    overrides={"host": "0.0.0.0", "allow_plain_http": True})
    assert c.host == "0.0.0.0"
    c = load_config(path=tmp_path / "x.toml", env={},
                    overrides={"host": "0.0.0.0", "tls_cert_file": "/x/c.pem",
                               "tls_key_file": "/x/k.pem"})
    assert c.base_url.startswith("https://")
    with pytest.raises(ConfigError):
        load_config(path=tmp_path / "x.toml", env={}, overrides={"tls_cert_file": "/x/c.pem"})


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_make_cert_and_https_serve_with_hsts(tmp_path):
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    r = subprocess.run([str(ROOT / "run.sh"), "make-cert", "--cert", str(cert), "--key",
                        str(key), "--hosts", "localhost,127.0.0.1"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (key.stat().st_mode & 0o777) == 0o600 and "IP Address:127.0.0.1" in r.stdout
    port = _free_port()
    env = dict(os.environ, CLOUDFILM_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}",
               CLOUDFILM_DATA_DIR=str(tmp_path / "data"),
               CLOUDFILM_SECRET_KEY_FILE=str(tmp_path / "secret.key"),
               CLOUDFILM_PORT=str(port), CLOUDFILM_HOST="0.0.0.0",
               CLOUDFILM_TLS_CERT_FILE=str(cert), CLOUDFILM_TLS_KEY_FILE=str(key),
               CLOUDFILM_INTEGRITY_SCRUB_HOURS="0")
    env.pop("CLOUDFILM_TEST_DB", None)
    proc = subprocess.Popen([str(ROOT / "run.sh"), "serve", "--no-demo"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"https://localhost:{port}/healthz", context=ctx,
                                            timeout=5) as resp:
                    headers = resp.headers
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.5)
        assert headers["Strict-Transport-Security"].startswith("max-age=31536000")
        # TLS 1.1 and older are refused
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        with pytest.raises((ssl.SSLError, OSError)):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with old.wrap_socket(raw, server_hostname="localhost"):
                    pass
    finally:
        proc.terminate()
        proc.wait(20)
