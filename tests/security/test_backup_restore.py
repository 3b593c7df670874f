"""`./run.sh backup DEST` / `./run.sh restore SRC` round-trip on SQLite and MariaDB: back up,
wipe, restore, compare row counts, file hashes and the audit chain."""
import hashlib
import shutil

import pytest

from models.db import database
from models.schema import Exam, Instance
from tests.dicom_factory import ct_bytes
from tests.security.test_audit_cli_tls import cli

pytestmark = pytest.mark.db


def snapshot(ctx):
    with database.connection_context():
        counts = {}
        for t in sorted(database.get_tables()):
            counts[t] = database.execute_sql(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
        files = {i.file_path: i.sha256 for i in Instance.select()}
    on_disk = {}
    for rel in files:
        p = ctx.storage.abspath(rel)
        on_disk[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None
    return counts, files, on_disk


def test_backup_wipe_restore_round_trip(ctx, config, catalog, tmp_path):
    from adapters.importer import Importer
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        (src / f"{i}.dcm").write_bytes(ct_bytes(study_uid="1.2.88.1", series_uid="1.2.88.2",
                                                sop_uid=f"1.2.88.3.{i}"))
    Importer(catalog).run([src])
    with database.connection_context():
        exam = Exam.get(Exam.study_uid == "1.2.88.1")
    catalog.store_report(exam, findings="所见", impression="印象", pdf=b"%PDF-1.4 r\n%%EOF\n")
    for i in range(5):
        ctx.auditor.record("test.backup", actor_kind="staff", actor_id=f"u{i}")
    before = snapshot(ctx)
    assert before[0]["instance"] == 4 and before[0]["audit_event"] == 5
    assert all(before[1][k] == before[2][k] for k in before[1])
    ctx.close()

    dest = tmp_path / "backup"
    r = cli(config, "backup", str(dest))
    assert r.returncode == 0, r.stderr
    assert (dest / "manifest.json").exists() and (dest / "secret.key").stat().st_mode & 0o077 == 0
    assert cli(config, "backup", str(dest)).returncode == 1          # never into a used folder

    # a restore over live data is refused without --force
    r = cli(config, "restore", str(dest))
    assert r.returncode == 1 and "not empty" in r.stderr

    # wipe: database and data folder gone
    if config.database_url.startswith("sqlite:///"):
        db_file = config.database_url[len("sqlite:///"):]
        for suffix in ("", "-wal", "-shm"):
            try:
                import os
                os.unlink(db_file + suffix)
            except FileNotFoundError:
                pass
    else:
        import pymysql
        from urllib.parse import urlparse
        p = urlparse(config.database_url)
        conn = pymysql.connect(host=p.hostname, port=p.port or 3306, user=p.username or "root",
                               password=p.password or "")
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE `{p.path.lstrip('/')}`")
        conn.close()
    shutil.rmtree(config.path("data_dir"))

    # a damaged backup is refused before anything is touched
    victim = next((dest / "files" / "dicom").rglob("*.dcm"))
    good = victim.read_bytes()
    victim.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    r = cli(config, "restore", str(dest))
    assert r.returncode == 1 and "checksum mismatch" in r.stderr
    victim.write_bytes(good)

    r = cli(config, "restore", str(dest))
    assert r.returncode == 0, r.stderr
    from server.context import open_context
    ctx2 = open_context(config)
    try:
        after = snapshot(ctx2)
        assert after == before
        assert ctx2.auditor.verify().ok
    finally:
        ctx2.close()
    r = cli(config, "audit", "verify")
    assert r.returncode == 0 and "5 records" in r.stdout
