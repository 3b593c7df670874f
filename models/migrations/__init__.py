"""Numbered schema migrations.

Each module mNNNN_<name>.py defines ``up(db)`` and ``down(db)``. ``migrate()`` applies
the ones not yet recorded in SchemaVersion, in order, each recorded only after it finished.

Rule for authors: ``up`` must be idempotent (create with ``safe=True``, add a column only
when it is missing), because MySQL commits DDL implicitly and a migration interrupted by a
power cut must be able to run again from the start on the next start-up.

Several nodes (or processes) may start together on one database: ``migrate`` runs under a
lock of the whole database (``migration_lock``: GET_LOCK on a dedicated MySQL/MariaDB
connection, a row of `cloudfilm_migration_lock` on a Galera cluster, an exclusive lock file
next to a SQLite database) and reads the applied versions
again once it holds it, so the nodes that come second find everything applied and go on. A
start with nothing pending takes no lock at all.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pkgutil
import time

from ..db import database, is_mysql, sqlite_path
from ..schema import SchemaVersion

log = logging.getLogger(__name__)

LOCK_NAME = "cloudfilm_migrate"
LOCK_TIMEOUT_S = 600.0     # a node waits this long for another node's migrations
LOCK_ROW_TABLE = "cloudfilm_migration_lock"
LOCK_ROW_S = 60            # a Galera lock row not renewed for this long is free again


def add_index(db, model, name: str, columns: str) -> None:
    """CREATE INDEX `name` ON the model's table (columns: SQL), unless it exists."""
    table = model._meta.table_name
    if name not in {i.name for i in db.get_indexes(table)}:
        db.execute_sql(f"CREATE INDEX {name} ON {table} ({columns})")


def drop_index(db, model, name: str) -> None:
    table = model._meta.table_name
    if name in {i.name for i in db.get_indexes(table)}:
        db.execute_sql(f"DROP INDEX {name} ON {table}" if is_mysql() else f"DROP INDEX {name}")


class MigrationLockTimeout(RuntimeError):
    """Another node (or process) held the migration lock for longer than we would wait."""


def available() -> list[tuple[int, str, object]]:
    out = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("m") and info.name[1:5].isdigit():
            mod = importlib.import_module(f"{__name__}.{info.name}")
            out.append((int(info.name[1:5]), info.name, mod))
    return sorted(out, key=lambda t: t[0])


def applied() -> set[int]:
    if not database.table_exists(SchemaVersion._meta.table_name):
        return set()
    return {row.version for row in SchemaVersion.select()}


@contextlib.contextmanager
def migration_lock(timeout: float = LOCK_TIMEOUT_S):
    """Hold the database's migration lock for the block (one holder in the deployment).

    MySQL/MariaDB: GET_LOCK on a connection of its own, so the lock lives exactly as long as
    this block (or the process: the server frees it when the connection drops) whatever the
    migrations do with the pooled connections. The lock name carries the database name:
    two CloudFilm databases on one server do not wait for each other.
    Galera (wsrep_on): GET_LOCK is a lock of one database node only (granted on two nodes at
    once), so the lock is a row of `cloudfilm_migration_lock` instead (_galera_lock).
    SQLite: an exclusive flock on `<database file>.migrate-lock` (kept; never removed, so
    two processes always lock the same file). An in-memory database needs no lock.
    Raises MigrationLockTimeout after `timeout` seconds of waiting."""
    if is_mysql():
        with _mysql_lock(timeout):
            yield
        return
    path = sqlite_path()
    if path is None or path == ":memory:" or path.startswith("file:"):
        yield
        return
    with _file_lock(path + ".migrate-lock", timeout):
        yield


@contextlib.contextmanager
def _mysql_lock(timeout: float):
    import pymysql
    obj = database.obj
    params = dict(obj.connect_params)
    name = f"{LOCK_NAME}.{obj.database}"[:64]
    conn = pymysql.connect(database=obj.database, **params)
    try:
        if _wsrep_on(conn):
            with _galera_lock(conn, name, timeout):
                yield
            return
        with conn.cursor() as cur:
            try:
                cur.execute("SELECT GET_LOCK(%s, 0)", (name,))
                got = cur.fetchone()[0]
                if got != 1:
                    cur.execute("SELECT IS_USED_LOCK(%s)", (name,))
                    log.info("waiting for the migration lock %r (held by MariaDB connection "
                             "%s: another node is migrating)", name, cur.fetchone()[0])
                    cur.execute("SELECT GET_LOCK(%s, %s)", (name, max(0.0, float(timeout))))
                    got = cur.fetchone()[0]
            except pymysql.err.OperationalError as exc:
                if exc.args and exc.args[0] == 1235:        # Galera (wsrep_on): no GET_LOCK
                    raise MigrationLockTimeout(
                        "this database server does not offer GET_LOCK (a Galera cluster): "
                        "apply the migrations from one node alone (`./run.sh migrate`) "
                        "before starting the others") from None
                raise
            if got != 1:
                cur.execute("SELECT IS_USED_LOCK(%s)", (name,))
                raise MigrationLockTimeout(
                    f"migration lock {name!r} still held after {timeout:.0f} s by MariaDB "
                    f"connection {cur.fetchone()[0]} (another node migrating, or hanging: "
                    "see SHOW PROCESSLIST); start this node again when it has finished")
        try:
            yield
        finally:
            with conn.cursor() as cur:
                cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
    finally:
        conn.close()           # frees the lock in any case


def _wsrep_on(conn) -> bool:
    """Whether this MariaDB server is a node of a Galera cluster (wsrep_on set)."""
    import pymysql
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@wsrep_on")
            return bool(int(cur.fetchone()[0] or 0))
    except pymysql.err.MySQLError:          # MySQL, or MariaDB built without wsrep
        return False


@contextlib.contextmanager
def _galera_lock(conn, name: str, timeout: float):
    """The migration lock of a Galera cluster: the row `name` of cloudfilm_migration_lock.

    Only one node can commit the INSERT of the row: a node that sees it gets a duplicate
    key error, and two nodes inserting at the same moment are ordered by Galera's
    certification (the second commit fails with a deadlock error). The holder renews the
    row's expiry every few seconds from a thread of its own; a node killed mid-migration
    leaves a row that others take over once it has not been renewed for LOCK_ROW_S seconds
    (its half-done migration runs again: migrations are idempotent). After taking the row
    the node waits, with wsrep_sync_wait, until it has applied everything the cluster
    committed before (the previous holder's migrations), then migrate() reads the applied
    versions again."""
    import socket
    import threading

    import pymysql
    conn.autocommit(True)
    holder = f"{socket.gethostname()}:{os.getpid()}:{id(conn)}"[:128]
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS cloudfilm_migration_lock (name VARCHAR(64) "
                    "PRIMARY KEY, holder VARCHAR(128) NOT NULL, expires_at DATETIME(6) NOT NULL)")
    deadline = time.monotonic() + max(0.0, timeout)
    waited = False
    while True:
        try:
            with conn.cursor() as cur:
                cur.execute("DELETE FROM cloudfilm_migration_lock WHERE name=%s AND "
                            "expires_at < UTC_TIMESTAMP(6)", (name,))
                cur.execute("INSERT INTO cloudfilm_migration_lock (name, holder, expires_at) "
                            "VALUES (%s, %s, UTC_TIMESTAMP(6) + INTERVAL %s SECOND)",
                            (name, holder, LOCK_ROW_S))
            break
        except pymysql.err.MySQLError as exc:
            if not exc.args or exc.args[0] not in (1062, 1213, 1205):
                raise
        if not waited:
            log.info("waiting for the migration lock %r (a row of %s: another node of the "
                     "Galera cluster is migrating)", name, LOCK_ROW_TABLE)
            waited = True
        if time.monotonic() >= deadline:
            raise MigrationLockTimeout(
                f"migration lock {name!r} (a row of {LOCK_ROW_TABLE}) still held after "
                f"{timeout:.0f} s by another node (migrating, or hanging); start this node "
                "again when it has finished")
        time.sleep(0.25)
    with conn.cursor() as cur:         # see the previous holder's migrations on this node
        cur.execute("SET SESSION wsrep_sync_wait = 1")
        cur.execute("SELECT COUNT(*) FROM cloudfilm_migration_lock")
        cur.fetchall()
        cur.execute("SET SESSION wsrep_sync_wait = 0")
    done = threading.Event()

    def renew():
        while not done.wait(LOCK_ROW_S / 6):
            try:
                with conn.cursor() as cur:
                    if not cur.execute("UPDATE cloudfilm_migration_lock SET expires_at = "
                                       "UTC_TIMESTAMP(6) + INTERVAL %s SECOND "
                                       "WHERE name=%s AND holder=%s",
                                       (LOCK_ROW_S, name, holder)):
                        log.error("migration lock %r lost (not renewed in %s s): another "
                                  "node may be migrating too", name, LOCK_ROW_S)
            except pymysql.err.MySQLError as exc:
                log.warning("migration lock %r not renewed: %s", name, exc)

    # the only user of the lock connection until it has stopped
    renewer = threading.Thread(target=renew, daemon=True, name="migration-lock")
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join(10)
        with conn.cursor() as cur:
            cur.execute("DELETE FROM cloudfilm_migration_lock WHERE name=%s AND holder=%s",
                        (name, holder))


@contextlib.contextmanager
def _file_lock(path: str, timeout: float):
    import fcntl
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + max(0.0, timeout)
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    log.info("waiting for the migration lock %s (another process is "
                             "migrating)", path)
                    waited = True
                if time.monotonic() >= deadline:
                    raise MigrationLockTimeout(
                        f"migration lock {LOCK_NAME} ({path}) still held after {timeout:.0f} s "
                        "by another process (migrating, or hanging: see `fuser` on the file); "
                        "start again when it has finished") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _pending(target: int | None) -> list[tuple[int, str, object]]:
    done = applied()
    return [(v, n, m) for v, n, m in available()
            if v not in done and (target is None or v <= target)]


def migrate(target: int | None = None, *, lock_timeout: float = LOCK_TIMEOUT_S) -> list[str]:
    """Apply pending migrations up to target (all by default). Returns the names applied.
    Runs under migration_lock and re-reads what is applied once it holds it, so nodes that
    start together apply each migration once; with nothing pending it takes no lock."""
    if not _pending(target):
        return []
    with migration_lock(lock_timeout):
        database.create_tables([SchemaVersion], safe=True)
        ran = []
        for version, name, mod in _pending(target):
            log.info("applying migration %s", name)
            with database.atomic():
                mod.up(database)
                SchemaVersion.create(version=version, name=name)
            ran.append(name)
        return ran


def rollback(target: int, *, lock_timeout: float = LOCK_TIMEOUT_S) -> list[str]:
    """Undo migrations above target, newest first (under migration_lock)."""
    with migration_lock(lock_timeout):
        done = applied()
        ran = []
        for version, name, mod in reversed(available()):
            if version <= target or version not in done:
                continue
            with database.atomic():
                mod.down(database)
                SchemaVersion.delete().where(SchemaVersion.version == version).execute()
            ran.append(name)
        return ran


def current_version() -> int:
    done = applied()
    return max(done) if done else 0
