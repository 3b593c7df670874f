"""models/db.py: which errors mean "the database is not there" (503, HL7 AE, one log line per
outage) and which are faults of the statement (still a 500 with a traceback)."""
from __future__ import annotations

import logging
import sqlite3

import peewee
import pymysql
import pytest

from models import db
from models.errors import DatabaseUnavailable


def wrapped(exc: Exception, kind=peewee.OperationalError) -> Exception:
    """What peewee raises for a driver error (its __exception_wrapper__: .orig holds the
    driver's error), here without the driver's error as __context__."""
    return kind(exc, *exc.args)


@pytest.mark.parametrize("exc", [
    wrapped(pymysql.err.OperationalError(2003, "Can't connect to MySQL server")),
    wrapped(pymysql.err.OperationalError(2006, "MySQL server has gone away")),
    wrapped(pymysql.err.OperationalError(2013, "Lost connection to MySQL server")),
    wrapped(pymysql.err.InterfaceError(0, ""), peewee.InterfaceError),
    wrapped(sqlite3.OperationalError("unable to open database file")),
    wrapped(sqlite3.OperationalError("disk I/O error")),
    DatabaseUnavailable("x"),
])
def test_outage_errors(exc):
    assert db.unavailable(exc)


@pytest.mark.parametrize("exc", [
    wrapped(pymysql.err.OperationalError(1054, "Unknown column 'x'")),
    wrapped(pymysql.err.IntegrityError(1062, "Duplicate entry"), peewee.IntegrityError),
    wrapped(sqlite3.OperationalError("no such table: exam")),
    ValueError("unrelated"),
])
def test_faults_of_the_statement_are_not_outages(exc):
    assert not db.unavailable(exc)


def test_one_line_when_it_starts_one_when_it_ends(caplog):
    outage = db.Outage()
    caplog.set_level(logging.INFO, logger="models.db")
    err = wrapped(pymysql.err.OperationalError(2003, "Can't connect to MySQL server"))
    for _ in range(50):
        outage.failed(err)
    assert outage.down
    outage.ok()
    outage.ok()
    lines = [r.getMessage() for r in caplog.records if r.name == "models.db"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("database unavailable") and "2003" in lines[0]
    assert lines[1].startswith("database available again") and "50 calls" in lines[1]
    assert not outage.down


def test_call_maps_an_outage_and_passes_other_errors(ctx, monkeypatch):
    monkeypatch.setattr(db, "outage", db.Outage())
    monkeypatch.setattr(db.outage, "probe_s", 0.0)
    def gone():
        raise wrapped(pymysql.err.OperationalError(2006, "MySQL server has gone away"))

    def broken():
        raise ValueError("a bug")

    with pytest.raises(DatabaseUnavailable) as info:
        db.call(gone)
    assert info.value.status == 503 and "database" in info.value.message
    with pytest.raises(ValueError):
        db.call(broken)
    assert db.call(lambda: 7) == 7 and not db.outage.down


def test_while_down_one_call_at_a_time_probes():
    """A hanging server makes each try wait up to connect_timeout: while the database is
    down, one call probes it (at most every probe_s) and the others answer 503 at once."""
    outage = db.Outage()
    outage.probe_s = 0.2
    assert outage.admit() and outage.admit()            # up: everyone tries
    outage.failed(wrapped(pymysql.err.OperationalError(2013, "Lost connection")))
    assert not outage.refusing()
    assert outage.admit()                               # the first probe
    assert outage.refusing()                            # seen before peewee's lock
    assert not outage.admit()                           # one in flight: the others wait
    outage.probed()
    assert not outage.admit()                           # too soon after the last probe
    import time
    time.sleep(0.25)
    assert outage.admit()
    outage.probed()
    outage.ok()
    assert outage.admit() and outage.admit()
