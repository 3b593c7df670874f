"""Database selection by URL: SQLite (default, embedded) or MySQL/MariaDB.

`database` is a peewee DatabaseProxy that every model uses; `connect(url)` binds it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import peewee
from playhouse.pool import PooledMySQLDatabase

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
        return peewee.SqliteDatabase(path, pragmas={
            "journal_mode": "wal",
            "synchronous": "normal",
            "foreign_keys": 1,
            "busy_timeout": 15000,
            "cache_size": -32000,
        }, timeout=15, check_same_thread=False)
    if url.startswith("mysql://"):
        p = urlparse(url)
        name = p.path.lstrip("/")
        if not name:
            raise DatabaseUrlError("mysql URL needs a database name: mysql://user:pass@host:3306/db")
        opts = {k: v[-1] for k, v in parse_qs(p.query).items()}
        return PooledMySQLDatabase(
            name,
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


def connection():
    """A context manager holding a database connection for the calls inside it (opened and
    closed around them unless one is already open in this thread)."""
    return database.connection_context()


def close_connection() -> None:
    """Close this thread's connection if one is open (a worker thread that is going away)."""
    if not database.is_closed():
        database.close()


def write_transaction():
    """A transaction that will write. On SQLite it takes the write lock at BEGIN
    (IMMEDIATE), so concurrent writers wait for each other (busy_timeout) instead of
    failing with 'database is locked' when a read snapshot cannot be upgraded."""
    if isinstance(database.obj, peewee.SqliteDatabase):
        return database.atomic("IMMEDIATE")
    return database.atomic()
