"""/healthz is liveness (cheap, always 200 while the process answers); /readyz is readiness:
database reachable, data folder writable, free space above min_free_disk_mb (issue 17: a
full filesystem kept /healthz at 200 with 116 KB free); write probes leave no files."""
import os
import time

import pytest

from models.storage import TMP_PREFIX, Storage

PROBE_PREFIX = TMP_PREFIX + "probe-"        # Storage.writable's probe files

pytestmark = pytest.mark.db


def test_readyz_ready(live):
    status, body = live.json("/readyz", auth=False)
    assert status == 200, body
    assert body["ok"] and body["failed"] == []
    assert body["database"] == "ok" and body["storage"] == "ok" and body["disk"] == "ok"
    assert body["free_mb"] > 0 and body["min_free_mb"] == 1024


def test_readyz_fails_below_free_space_threshold_healthz_stays_alive(live, ctx):
    free_mb = ctx.storage.free_bytes() >> 20
    ctx.config.set_base(min_free_disk_mb=min(free_mb + 1024, 1048576))
    ctx.health_probe = None                       # no answer cached from another test
    status, hdrs, raw = live.get("/readyz", auth=False)
    import json
    body = json.loads(raw)
    assert status == 503 and body["failed"] == ["disk"] and body["disk"] == "low free space"
    assert hdrs["Retry-After"]
    # the database and storage are fine; liveness is unaffected
    assert body["database"] == "ok" and body["storage"] == "ok"
    status, body = live.json("/healthz", auth=False)
    assert status == 200 and body["ok"] and body["alive"]
    ctx.config.set_base(min_free_disk_mb=0)          # 0: not checked
    ctx.health_probe = None
    assert live.json("/readyz", auth=False)[0] == 200


def test_readyz_database_unreachable(live, ctx, monkeypatch):
    from models import db as dbmod

    def down():
        raise dbmod.peewee.OperationalError("the database is away")
    monkeypatch.setattr(dbmod, "ping", down)
    ctx.health_probe = None
    status, body = live.json("/readyz", auth=False)
    assert status == 503 and body["failed"] == ["database"]
    assert body["database"] == "unreachable"
    # /healthz does not touch the database
    assert live.json("/healthz", auth=False)[0] == 200


def test_readyz_storage_not_writable(live, ctx, monkeypatch):
    monkeypatch.setattr(ctx.storage, "writable", lambda: False)
    ctx.health_probe = None
    status, body = live.json("/readyz", auth=False)
    assert status == 503 and body["storage"] == "not writable" and "storage" in body["failed"]
    assert live.json("/healthz", auth=False)[0] == 200


def test_failed_write_probe_leaves_no_file(tmp_path, monkeypatch):
    """A full disk creates the probe file and then fails the write."""
    storage = Storage(tmp_path)
    storage.ensure()
    import pathlib
    real = pathlib.Path.write_bytes

    def full_disk(self, data):
        if self.name.startswith(PROBE_PREFIX):
            real(self, b"")                        # created, then no space left
            raise OSError(28, "No space left on device")
        return real(self, data)
    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    assert storage.writable() is False
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)] == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_probe_fails_cleanly(tmp_path):
    storage = Storage(tmp_path / "ro")
    storage.ensure()
    os.chmod(storage.root, 0o500)
    try:
        assert storage.writable() is False
    finally:
        os.chmod(storage.root, 0o700)
    assert [p.name for p in storage.root.iterdir() if p.name.startswith(TMP_PREFIX)] == []


def test_stale_probe_files_removed_at_next_start(config):
    """Probe files of a killed run go at the next start whatever their age; a young import
    temp file of another node's running import stays until it is stale."""
    data = config.path("data_dir")
    (data / "dicom").mkdir(parents=True, exist_ok=True)
    probe = data / f"{PROBE_PREFIX}deadbeef"
    probe.write_bytes(b"ok")
    young_import = data / "dicom" / f"{TMP_PREFIX}0123abcd"
    young_import.write_bytes(b"x" * 10)
    old_import = data / "dicom" / f"{TMP_PREFIX}4567ef01"
    old_import.write_bytes(b"x" * 10)
    past = time.time() - 3600
    os.utime(old_import, (past, past))
    from server.context import open_context
    ctx = open_context(config)
    try:
        assert not probe.exists() and not old_import.exists()
        assert young_import.exists()
    finally:
        ctx.close()
