"""N identical nodes (issue 17): nodes started at the same moment on one fresh, empty database
all come up. Each node here is a real process running the server's own start-up path
(server/cli.py cmd_serve: `_open` → open_context → migrate, then ensure_first_admin), held
at a barrier until every node is ready to open the database, then released together.
Migrations are serialised by a database lock (GET_LOCK on MariaDB, a lock file next to a
SQLite database), so the nodes that come second find everything applied and go on."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.db

NODE = r"""
import os, sys, time
root, url, data, key, barrier = sys.argv[1:6]
sys.path.insert(0, root)
from server.cli import _open
from server.config import load_config
from models.accounts import ensure_first_admin
from models.migrations import applied, available
cfg = load_config(path=os.path.join(data, "none.toml"), env={}, overrides={
    "database_url": url, "data_dir": data, "secret_key_file": key, "demo_data": False,
    "render_threads": 1})
print("READY", flush=True)
while not os.path.exists(barrier):
    time.sleep(0.001)
ctx = _open(cfg)                                    # what cmd_serve does first
ensure_first_admin("Node-Start-Pass-1")
missing = {v for v, _, _ in available()} - applied()
print("UP", len(missing), flush=True)
ctx.close()
"""

NODES = 3


def start_together(tmp_path, url: str, n: int) -> list[tuple[int, str, str]]:
    """Start n nodes on url, release them at once, return (exit code, stdout, stderr)."""
    barrier = tmp_path / "go"
    key = tmp_path / "secret.key"
    key.write_text("ab" * 32)               # the same key file on every node
    procs = [subprocess.Popen(
        [sys.executable, "-c", NODE, str(ROOT), url, str(tmp_path / "data"), str(key),
         str(barrier)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n)]
    try:
        for p in procs:                     # every node has imported everything
            assert p.stdout.readline().strip() == "READY"
        barrier.touch()
        out = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            out.append((p.returncode, stdout, stderr))
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


@pytest.mark.parametrize("attempt", range(3))
def test_nodes_started_together_on_an_empty_database_all_come_up(tmp_path, database_url,
                                                                   attempt):
    results = start_together(tmp_path, database_url, NODES)
    for code, stdout, stderr in results:
        assert code == 0, f"a node died at start-up:\n{stderr[-3000:]}"
        assert stdout.split()[-2:] == ["UP", "0"], stdout   # every migration applied
    from models import db
    from models.schema import StaffUser
    from models.migrations import applied, available
    db.connect(database_url)
    with db.connection():
        assert applied() == {v for v, _, _ in available()}
        assert StaffUser.select().count() == 1          # one first admin, not one per node
    db.database.close()


def test_a_node_waits_for_the_migration_lock_then_fails_with_a_clear_error(
        tmp_path, database_url):
    """Someone else holds the migration lock for longer than lock_timeout: migrate() waits,
    then stops with an error naming the lock, not a half-applied schema."""
    from models import db, personal_data
    from models.migrations import migrate, migration_lock
    personal_data.configure(b"\xab" * 32)          # m0058 seals with the server key
    db.connect(database_url)
    t0 = time.monotonic()
    with migration_lock(timeout=5):
        held = subprocess.run(
            [sys.executable, "-c", (
                "import sys; sys.path.insert(0, sys.argv[1]); from models import db; "
                "from models.migrations import migrate, MigrationLockTimeout\n"
                "from models import personal_data; personal_data.configure(bytes(32))\n"
                "db.connect(sys.argv[2])\n"
                "try:\n    migrate(lock_timeout=1.5)\n"
                "except MigrationLockTimeout as e:\n    print('TIMEOUT', e)\n"),
             str(ROOT), database_url], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert held.returncode == 0, held.stderr[-2000:]
    assert held.stdout.startswith("TIMEOUT") and "cloudfilm_migrate" in held.stdout, held.stdout
    assert time.monotonic() - t0 >= 1.5
    with db.connection():
        assert migrate(lock_timeout=5)          # released: this one applies everything
        assert migrate(lock_timeout=5) == []
    db.database.close()
