"""An audit trail that survives a database administrator (issue 14 item 7).

Someone with the database's own rights drops the append-only triggers, deletes the newest
audit records and moves the head row back to the last remaining record: the remaining chain
is consistent, so the chain walk alone cannot see it. The signed head and the anchors outside
the database (var/audit-anchor.log, the system journal) must name it. Also: the CSV export
neutralises spreadsheet formulas."""
from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import sys

import pytest

from models import audit as audit_mod
from models.audit import drop_append_only_triggers, install_append_only_triggers
from models.db import database
from models.schema import AuditEvent
from server.config import ROOT
from tests.conftest import staff_headers

pytestmark = pytest.mark.db


def cli(config, *args):
    env = {**os.environ, "CLOUDFILM_DATABASE_URL": config.database_url,
           "CLOUDFILM_DATA_DIR": str(config.path("data_dir")),
           "CLOUDFILM_SECRET_KEY_FILE": str(config.path("secret_key_file")),
           "CLOUDFILM_DEMO_DATA": "false", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def head_row():
    return database.execute_sql(
        "SELECT last_id, last_hmac, signature FROM audit_head WHERE id = 1").fetchone()


def hmac_of(record_id):
    return database.execute_sql("SELECT hmac FROM audit_event WHERE id = %s" % int(record_id)
                                ).fetchone()[0]


def dba_cuts_tail(keep: int, head=None):
    """What a DBA does: drop the triggers, delete the newest rows, move the head back (to
    `head`, a (last_id, last_hmac, signature) row saved earlier, or just id and HMAC)."""
    drop_append_only_triggers()
    database.execute_sql("DELETE FROM audit_event WHERE id > %d" % keep)
    if head is None:
        database.execute_sql("UPDATE audit_head SET last_id = %d, last_hmac = '%s' WHERE id = 1"
                             % (keep, hmac_of(keep)))
    else:
        database.execute_sql("UPDATE audit_head SET last_id = %d, last_hmac = '%s', "
                             "signature = '%s' WHERE id = 1" % head)
    install_append_only_triggers()


def record(ctx, n, start=0):
    for i in range(start, start + n):
        ctx.auditor.record("test.event", actor_kind="staff", actor_id=f"u{i}", detail=str(i))


def test_head_moved_back_is_named_by_the_anchor(ctx, config):
    record(ctx, 7)
    r = cli(config, "audit", "verify")                     # verifies and anchors record 7
    assert r.returncode == 0 and "7 records verified" in r.stdout, r.stderr
    anchor_file = config.path("secret_key_file").parent / "audit-anchor.log"
    line = anchor_file.read_text().splitlines()[-1].split(" ")
    assert line[1] == "7" and line[2] == hmac_of(7) and len(line[3]) == 64
    assert oct(anchor_file.stat().st_mode & 0o777) == "0o600"
    saved_head = head_row()                               # a DBA's snapshot of the head row
    record(ctx, 3, start=7)
    assert ctx.auditor.verify().ok                        # anchors record 10 too

    # the newest three records go, the head is put back exactly as it was at record 7
    dba_cuts_tail(7, head=saved_head)
    r = cli(config, "audit", "verify")
    assert r.returncode == 1, r.stdout
    assert "records after 7 were deleted" in r.stderr and "names record 10" in r.stderr


def test_head_moved_back_without_its_signature_is_refused(ctx, config):
    record(ctx, 6)
    dba_cuts_tail(4)                                      # no anchor yet: the signature tells
    res = ctx.auditor.verify()
    assert not res.ok and "signature mismatch" in res.problem and "after 4" in res.problem
    anchor_file = config.path("secret_key_file").parent / "audit-anchor.log"
    assert not anchor_file.exists()                       # a broken chain is never anchored


def test_deleted_and_rewritten_tail_is_named(ctx):
    record(ctx, 5)
    assert ctx.auditor.verify().ok                        # anchored at 5
    record(ctx, 3, start=5)
    assert ctx.auditor.anchor() is not None               # the maintenance loop: at 8
    saved = head_row()
    dba_cuts_tail(5, head=None)
    # the application goes on appending after record 5 and signs the new head itself: the
    # head and the chain are consistent again, only the anchors remember records 6..8
    record(ctx, 4, start=100)                             # 6'..9'
    assert head_row()[2] == ctx.auditor.head_signature(9, hmac_of(9))   # signature satisfied
    res = ctx.auditor.verify()
    assert not res.ok
    assert "records after 5 were deleted and replaced" in res.problem, res.problem
    assert "record 8 differs" in res.problem and saved[0] == 8


def test_forged_anchor_line_is_refused(ctx, config):
    record(ctx, 3)
    assert ctx.auditor.verify().ok
    anchor_file = config.path("secret_key_file").parent / "audit-anchor.log"
    at, _id, hm, sig = anchor_file.read_text().split("\n")[0].split(" ")
    with open(anchor_file, "a") as fh:                    # a lower id, to excuse a deletion
        fh.write(f"{at} 2 {hm} {sig}\n")
    res = ctx.auditor.verify()
    assert not res.ok and "line 2 does not match its signature" in res.problem


def test_maintenance_anchors_to_file_and_journal(ctx, tmp_path, monkeypatch):
    """The maintenance loop's anchor goes to the file and to syslog (here a datagram socket
    standing in for /dev/log); unchanged heads are not anchored twice."""
    from server import maintenance
    sock_path = str(tmp_path / "log.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(sock_path)
    rx.settimeout(5)
    for h in list(audit_mod.anchor_log.handlers):
        audit_mod.anchor_log.removeHandler(h)
    monkeypatch.setattr(audit_mod.anchor_log, "_cf_ready", False, raising=False)
    monkeypatch.setattr(audit_mod, "SYSLOG_SOCKET", sock_path)
    try:
        record(ctx, 2)
        a = maintenance.anchor_once(ctx)
        assert a is not None and a.last_id == 2
        msg = rx.recv(4096).decode()
        assert "cloudfilm: audit anchor" in msg and f" 2 {a.last_hmac} " in msg
        assert maintenance.anchor_once(ctx) is None        # nothing new
        record(ctx, 1, start=2)
        assert maintenance.anchor_once(ctx).last_id == 3
        lines = ctx.auditor.anchor_file.read_text().splitlines()
        assert [ln.split(" ")[1] for ln in lines] == ["2", "3"]
    finally:
        for h in list(audit_mod.anchor_log.handlers):
            audit_mod.anchor_log.removeHandler(h)
            h.close()
        audit_mod.anchor_log._cf_ready = False
        rx.close()


@pytest.mark.parametrize("cell", ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)",
                                  "\tcmd", "\r=1"])
def test_csv_export_neutralises_formulas(ctx, cell):
    ctx.auditor.record("test.csv", actor_kind="staff", actor_id=cell[:60], detail=cell)
    text = ctx.auditor.export_csv(AuditEvent.select().order_by(AuditEvent.id))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[1][2] == "'" + cell[:60] and rows[1][8] == "'" + cell
    assert not any(c.startswith(audit_mod.FORMULA_START) for r in rows for c in r)


def test_csv_formula_neutralised_in_http_and_cli_exports(live, ctx):
    ctx.auditor.record("login", actor_kind="staff", actor_id="=cmd|' /C calc'!A0",
                       detail="@SUM(1+1)*cmd")
    aud = staff_headers("aud1", ("auditadmin",))
    st, _, body = live.get("/api/admin/audit.csv", headers=aud, auth=False)
    assert st == 200
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    row = next(r for r in rows if "cmd|" in r[2])
    assert row[2] == "'=cmd|' /C calc'!A0" and row[8] == "'@SUM(1+1)*cmd"
    r = cli(ctx.config, "audit", "export")
    assert r.returncode == 0 and "'=cmd|" in r.stdout and "\n=cmd" not in r.stdout
