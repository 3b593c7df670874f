"""Database selection by URL: SQLite (default, embedded) or MySQL/MariaDB.

`database` is a peewee DatabaseProxy that every model uses; `connect(url)` binds it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import peewee
from playhouse.pool import PooledMySQLDatabase

from .errors import DatabaseUnavailable

log = logging.getLogger(__name__)

database = peewee.DatabaseProxy()


class DatabaseUrlError(ValueError):
    pass


def describe_url(url: str) -> str:
    """The URL without its password, safe to print or log."""
    p = urlparse(url)
    if p.password:
        netloc = f"{p.username}:***@{p.hostname}" + (f":{p.port}" if p.port else "")
        return p._replace(netloc=netloc).geturl()
    return url


def make_database(url: str, root: Path | None = None) -> peewee.Database:
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path != ":memory:":
            p = Path(path)
            if not p.is_absolute() and root is not None:
                p = root / p
            p.parent.mkdir(parents=True, exist_ok=True)
            path = str(p)
        db = peewee.SqliteDatabase(path, pragmas={
            "journal_mode": "wal",
            "synchronous": "normal",
            "foreign_keys": 1,
            "busy_timeout": 15000,
            "cache_size": -32000,
        }, timeout=15, check_same_thread=False)
        db.write_lock = threading.Lock()       # write_transaction: writers of this process
        return db
    if url.startswith("mysql://"):
        p = urlparse(url)
        name = p.path.lstrip("/")
        if not name:
            raise DatabaseUrlError("mysql URL needs a database name: mysql://user:pass@host:3306/db")
        opts = {k: v[-1] for k, v in parse_qs(p.query).items()}
        read_timeout = float(opts["read_timeout"]) if opts.get("read_timeout") else None
        return _MySQLPool(
            name,
            query_read_timeout=read_timeout,
            user=unquote(p.username or "root"),
            password=unquote(p.password or ""),
            host=p.hostname or "127.0.0.1",
            port=p.port or 3306,
            charset="utf8mb4",
            max_connections=int(opts.get("max_connections", 32)),
            stale_timeout=300,
            connect_timeout=5,
        )
    raise DatabaseUrlError(f"unsupported database URL {describe_url(url)!r}: use sqlite:///PATH "
                           "or mysql://user:pass@host:3306/db")


class _ShortHandshake(peewee.MySQLDatabase):
    """New connections wait at most connect_timeout for the server's greeting too (pymysql
    applies connect_timeout to the TCP connect only, then reads the greeting with the query
    read timeout: a stopped server would hold the thread forever); queries then get
    query_read_timeout (None: no limit, a long query is not a dead server)."""

    def __init__(self, *args, query_read_timeout=None, **kwargs):
        self.query_read_timeout = query_read_timeout
        super().__init__(*args, **kwargs)
        self.connect_params["read_timeout"] = self.connect_params.get("connect_timeout", 5)

    def _connect(self):
        conn = super()._connect()
        conn._read_timeout = self.query_read_timeout     # pymysql applies it on the next read
        return conn


class _MySQLPool(PooledMySQLDatabase, _ShortHandshake):
    """peewee's pool, which pings a pooled connection on checkout and drops it when the ping
    fails (a connection that died while the server was away never reaches a query); the
    ping waits at most connect_timeout (pymysql's ping has no timeout of its own, PyMySQL
    issue 1169), so a hanging server costs a request seconds, not forever. A ping that timed
    out means the server hangs: the other pooled connections of that checkout are dropped
    without a ping each (peewee pings under the pool's lock, so N dead connections would
    hold every thread N times connect_timeout)."""

    _hung = False

    def connect(self, reuse_if_open=False):
        if outage.refusing():       # before peewee's lock, which a probe may hold for seconds
            raise DatabaseUnavailable("database down: not tried (another call is probing it)")
        return super().connect(reuse_if_open)

    def _connect(self):
        # peewee opens connections under one lock of the database: with a hanging server
        # every thread would queue there for connect_timeout each; while it is down, one
        # thread at a time tries (outage.admit), the others fail at once
        if not outage.admit():
            raise DatabaseUnavailable("database down: not tried (another call is probing it)")
        try:
            self._hung = False
            conn = super()._connect()
        finally:
            outage.probed()
        outage.ok()
        return conn

    def _is_closed(self, conn):
        if self._hung:
            return True
        saved = getattr(conn, "_read_timeout", None)
        try:
            conn._read_timeout = self.connect_params.get("connect_timeout", 5)
            conn.ping(False)
        except Exception as exc:  # noqa: BLE001 - any failure: not usable
            self._hung = "timed out" in str(exc)
            return True
        finally:
            conn._read_timeout = saved
        return False

    def _can_reuse(self, conn):
        # peewee rolls back on check-in, under the database's and the pool's locks: with a
        # hanging server and no read timeout that would hold every thread forever; a
        # rollback slower than connect_timeout closes the connection instead
        saved = getattr(conn, "_read_timeout", None)
        try:
            conn._read_timeout = self.connect_params.get("connect_timeout", 5)
            return super()._can_reuse(conn)
        finally:
            conn._read_timeout = saved


def create_mysql_database_if_missing(url: str) -> None:
    """Create the MySQL database named in the URL (utf8mb4) when it does not exist."""
    import pymysql

    p = urlparse(url)
    name = p.path.lstrip("/")
    if not name.replace("_", "").isalnum():
        raise DatabaseUrlError(f"database name {name!r}: use letters, digits and _ only")
    conn = pymysql.connect(host=p.hostname or "127.0.0.1", port=p.port or 3306,
                           user=unquote(p.username or "root"), password=unquote(p.password or ""),
                           connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` "
                        "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        conn.commit()
    finally:
        conn.close()


def connect(url: str, root: Path | None = None) -> peewee.Database:
    """Bind the models to the database named by url (creating a MySQL database if needed)."""
    if url.startswith("mysql://"):
        create_mysql_database_if_missing(url)
    db = make_database(url, root)
    database.initialize(db)
    return db


# pymysql / MariaDB error numbers that mean the server is not there (rather than a fault of
# the statement): can't connect (2002, 2003), gone away (2006), lost during a query (2013),
# lost during a write (2055), too many connections (1040), shutting down (1053), connection
# killed (1927), disconnected by the server (4031)
_MYSQL_AWAY = {1040, 1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031}
_SQLITE_AWAY = ("unable to open database", "disk i/o error")


def unavailable(exc: BaseException) -> bool:
    """True when exc (or what it wraps) says the database cannot be reached right now."""
    import sqlite3

    import pymysql

    seen = 0
    while exc is not None and seen < 6:
        seen += 1
        if isinstance(exc, DatabaseUnavailable):
            return True
        if isinstance(exc, pymysql.err.InterfaceError):
            return True                      # a connection already closed under us
        if isinstance(exc, pymysql.err.OperationalError):
            return bool(exc.args) and exc.args[0] in _MYSQL_AWAY
        if isinstance(exc, sqlite3.OperationalError):
            return any(m in str(exc).lower() for m in _SQLITE_AWAY)
        if isinstance(exc, peewee.PeeweeException) and \
                isinstance(getattr(exc, "orig", None), BaseException):
            exc = exc.orig                   # peewee wraps the driver's error
            continue
        exc = exc.__cause__ or exc.__context__
    return False


def describe_error(exc: BaseException) -> str:
    """A short reason for the log (the driver's message: no data of the statement)."""
    inner = getattr(exc, "orig", None)
    inner = inner if isinstance(inner, BaseException) else exc
    return f"{type(inner).__name__}: {inner}"[:300]


class Outage:
    """The database's reachability as this process sees it: one warning when calls start to
    fail, one info line when the first call succeeds again, nothing per request between.

    While it is down, threads do not each wait for a server that may hang (a ping or a
    handshake waits up to connect_timeout, under peewee's lock): the MySQL pool lets one
    checkout at a time probe it, at most every probe_s (`admit`); the others fail at once."""

    probe_s = 1.0

    def __init__(self):
        self._lock = threading.Lock()
        self.since: float | None = None
        self.refused = 0
        self._probe_at = 0.0            # when the last probe started, then ended
        self._probing = False

    @property
    def down(self) -> bool:
        return self.since is not None

    def admit(self) -> bool:
        """May this call try the database? Always while it is up; while it is down, when no
        other probe is in flight and the last one ended probe_s ago or more."""
        if self.since is None:
            return True
        with self._lock:
            now = time.monotonic()
            if self.since is None:
                return True
            if (self._probing and now - self._probe_at < 30) or \
                    now - self._probe_at < self.probe_s:
                self.refused += 1
                return False
            self._probing, self._probe_at = True, now
            return True

    def refusing(self) -> bool:
        """A quick look without the lock: down, and a probe in flight or just ended."""
        if self.since is None:
            return False
        return self._probing or time.monotonic() - self._probe_at < self.probe_s

    def probed(self) -> None:
        if self._probing:
            # the next probe probe_s after this one ended: the threads queued behind it
            # on peewee's lock meanwhile fail at once instead of probing one after another
            self._probing, self._probe_at = False, time.monotonic()

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.refused += 1
            if self.since is not None:
                return
            self.since = time.monotonic()
        log.warning("database unavailable (%s): answering 503 and HL7 AE until it is back",
                    describe_error(exc))

    def ok(self) -> None:
        if self.since is None:
            return
        with self._lock:
            if self.since is None:
                return
            took, refused = time.monotonic() - self.since, self.refused
            self.since, self.refused = None, 0
        log.info("database available again after %.1f s (%d calls refused meanwhile)", took,
                 refused)


outage = Outage()


def call(fn, *args, **kwargs):
    """fn(*args, **kwargs) holding a connection for the call. A database that cannot be
    reached raises DatabaseUnavailable (status 503), noted once per outage in the log."""
    return _guarded(True, fn, args, kwargs)


def guarded(fn, *args, **kwargs):
    """fn(*args, **kwargs) on the thread's own long-lived connection (a worker's): as `call`,
    and a connection that failed because the server went away is dropped, so the thread's
    next call opens a fresh one instead of failing on the dead one forever."""
    return _guarded(False, fn, args, kwargs)


def connection_open() -> bool:
    """Does this thread hold an open connection (a worker's, kept between calls)?"""
    return database.obj is not None and not database.is_closed()


def _guarded(hold: bool, fn, args, kwargs):
    for attempt in (0, 1):
        stale = not hold and connection_open()
        try:
            if hold:
                with connection():
                    result = fn(*args, **kwargs)
            else:
                result = fn(*args, **kwargs)
            break
        except Exception as exc:
            if not unavailable(exc):
                raise
            drop_connection()
            if stale and attempt == 0 and not isinstance(exc, DatabaseUnavailable):
                continue            # kept from before (it died while idle): once more, fresh
            outage.failed(exc)
            if isinstance(exc, DatabaseUnavailable):
                raise
            raise DatabaseUnavailable(describe_error(exc)) from None
    outage.ok()
    return result


def is_mysql() -> bool:
    return isinstance(database.obj, peewee.MySQLDatabase)


def ping() -> None:
    """Raise if the database cannot answer a trivial query."""
    database.execute_sql("SELECT 1").fetchone()


def sqlite_path() -> str | None:
    obj = database.obj
    if isinstance(obj, peewee.SqliteDatabase):
        return os.fspath(obj.database)
    return None


class _KeptConnection:
    """SQLite: the thread's connection is opened once and kept for its later calls. Opening
    one (connect and five PRAGMAs) cost 1.7 ms, four times the session look-up it was opened
    for, on nearly every request (issue 17: 29% of the busy thread time under load). A
    connection outside a transaction holds no lock and no read snapshot (autocommit), so
    keeping it costs nothing; one left inside a transaction by a failed call is rolled back."""

    def __enter__(self):
        database.connect(reuse_if_open=True)

    def __exit__(self, *exc) -> None:
        if database.in_transaction():
            return                            # an outer transaction of this thread owns it
        conn = database.connection()
        if conn.in_transaction:
            conn.rollback()


def connection():
    """A context manager holding a database connection for the calls inside it: on MariaDB
    taken from the pool and given back afterwards (unless one is already open in this
    thread); on SQLite this thread's own connection, kept open (_KeptConnection)."""
    if isinstance(database.obj, peewee.SqliteDatabase):
        return _KeptConnection()
    return database.connection_context()


def close_connection() -> None:
    """Close this thread's connection if one is open (a worker thread that is going away)."""
    if not database.is_closed():
        database.close()


def drop_connection() -> None:
    """Close this thread's connection without returning it to the pool (it failed: the
    server went away); the thread's next call opens a fresh one."""
    if database.obj is None or database.is_closed():
        return
    try:
        if hasattr(database.obj, "manual_close"):
            database.obj.manual_close()
        else:
            database.close()
    except Exception:  # noqa: BLE001 - closing a dead connection may fail; it is gone anyway
        log.debug("closing a dead connection failed", exc_info=True)


class _SqliteWrite:
    """BEGIN IMMEDIATE behind the process's write lock of the database (issue 15).

    SQLite lets one writer in at a time; a connection that finds the write lock taken waits
    in SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25... ms between tries, so
    the lock often stands free while the next writer sleeps (measured: with four HL7
    connections the worker threads spent more time in BEGIN than in applying messages).
    Writers of this process queue on a threading.Lock instead and go the moment the previous
    one commits; writers of other processes still meet at SQLite's lock (busy_timeout) as
    before. Only the outermost transaction of a thread takes the lock (a nested
    write_transaction is a savepoint of the one that holds it, and a thread already inside
    another transaction does not wait here for a writer that may be waiting for it). A lock
    not had within the database's timeout is passed by, leaving the wait to SQLite as before."""

    def __init__(self, db: peewee.SqliteDatabase, lock: threading.Lock):
        self.db, self.lock = db, lock
        self.held = False
        self.txn = None

    def __enter__(self):
        if not self.db.in_transaction():
            self.held = self.lock.acquire(timeout=self.db.timeout or 15)
            if not self.held:
                log.warning("SQLite write lock of this process not had in %s s: waiting on "
                            "the database's own lock instead", self.db.timeout or 15)
        try:
            self.txn = self.db.atomic("IMMEDIATE")
            return self.txn.__enter__()
        except BaseException:
            self._release()
            raise

    def __exit__(self, *exc):
        try:
            return self.txn.__exit__(*exc)
        finally:
            self._release()

    def _release(self) -> None:
        if self.held:
            self.held = False
            self.lock.release()


def write_transaction():
    """A transaction that will write. On SQLite it takes the write lock at BEGIN
    (IMMEDIATE), so concurrent writers wait for each other instead of failing with 'database
    is locked' when a read snapshot cannot be upgraded; the writers of this process queue on
    a lock of the process first (_SqliteWrite), not in SQLite's sleeping busy handler."""
    obj = database.obj
    if isinstance(obj, peewee.SqliteDatabase):
        lock = getattr(obj, "write_lock", None)
        return _SqliteWrite(obj, lock) if lock is not None else database.atomic("IMMEDIATE")
    return database.atomic()


RETRIED_ERRORS = (1213, 1205)   # deadlock (also Galera's certification failure), lock wait


def retrying(fn, attempts: int = 5):
    """Run fn() (which opens and commits its own write transaction) again when MySQL/MariaDB
    rolled that transaction back as a whole: a deadlock (1213, also how a Galera node reports
    a certification failure at commit, when another node committed a change to the same rows
    first) or a lock wait timeout (1205). Only for a function whose every effect is inside
    that transaction, so running it again is running it once. Other errors, and the last
    attempt's, go to the caller. Called inside a transaction (fn's would be a savepoint of
    it, and the error has rolled back the outer one too) it runs fn once."""
    if database.in_transaction():
        return fn()
    for attempt in range(attempts):
        try:
            return fn()
        except peewee.OperationalError as exc:
            if not exc.args or exc.args[0] not in RETRIED_ERRORS or attempt == attempts - 1:
                raise
            log.info("transaction rolled back by the database (%s), running it again",
                     exc.args[0])
        time.sleep(0.01 * (attempt + 1))


class Prepared:
    """A one-row SELECT whose SQL peewee builds once per kind of database and that is then
    run with new values (issue 15: on the HL7 path building a query's SQL cost more than
    running it). `build(**marks)` returns the peewee query with each named value in place;
    the values must be text compared as text (CharField), the query's shape must not depend
    on them. `first(**values)` returns the row as a model instance (as `.first()` would:
    field conversions applied, nothing dirty) or None."""

    def __init__(self, build, *names: str):
        self.build, self.names = build, names
        self._compiled: dict = {}

    def _compile(self):
        kind = type(database.obj)
        hit = self._compiled.get(kind)
        if hit is None:
            marks = {n: f"\x00prepared {n} {id(self)}\x00" for n in self.names}
            query = self.build(**marks)
            sql, params = query.limit(1).sql()
            slots = [(i, n) for i, p in enumerate(params) for n, m in marks.items() if p == m]
            if sorted({n for _, n in slots}) != sorted(self.names):
                raise ValueError(f"prepared query: values {self.names} not all found as "
                                 "parameters of its SQL")
            hit = self._compiled[kind] = (query.model, sql, tuple(params), tuple(slots))
        return hit

    def first(self, **values):
        model, sql, params, slots = self._compile()
        params = list(params)
        for i, name in slots:
            params[i] = values[name]
        # not model.raw(): a model may have a field of that name (inbound_message.raw)
        rows = peewee.ModelRaw(model, sql, params).execute()
        return rows[0] if len(rows) else None
