"""models/db.py write_transaction on SQLite: the writers of one process queue on a lock and
the next one starts as soon as the previous commits (issue 15), nested and failed
transactions leave the lock free."""
from __future__ import annotations

import threading
import time

import pytest

from models import db as dbmod
from models.db import database, write_transaction


@pytest.fixture
def sqlite_db(ctx):
    if dbmod.is_mysql():
        pytest.skip("SQLite's write lock")
    database.execute_sql("CREATE TABLE IF NOT EXISTS lock_probe (who TEXT)")
    yield database.obj
    dbmod.close_connection()


def test_next_writer_starts_when_the_previous_commits(sqlite_db):
    """SQLite's busy handler sleeps 1, 2, 5 ... 100 ms between tries: a writer waiting
    behind one that held the lock 0.25 s got in about 80 ms after the commit."""
    a_in = threading.Event()
    t: dict[str, float] = {}

    def a():
        with write_transaction():
            database.execute_sql("INSERT INTO lock_probe VALUES ('a')")
            a_in.set()
            time.sleep(0.25)
            t["a_last"] = time.perf_counter()
        t["a_done"] = time.perf_counter()
        dbmod.close_connection()

    def b():
        a_in.wait(5)
        time.sleep(0.005)
        with write_transaction():
            t["b_in"] = time.perf_counter()
            database.execute_sql("INSERT INTO lock_probe VALUES ('b')")
        dbmod.close_connection()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(20)
    assert t["b_in"] > t["a_last"]                       # one writer at a time
    assert t["b_in"] - t["a_done"] < 0.04, t["b_in"] - t["a_done"]
    rows = [r[0] for r in database.execute_sql("SELECT who FROM lock_probe").fetchall()]
    assert rows == ["a", "b"]


def test_nested_and_failed_transactions_leave_the_lock_free(sqlite_db):
    lock = sqlite_db.write_lock
    with write_transaction():
        assert lock.locked()
        with write_transaction():                        # a savepoint: no second wait
            database.execute_sql("INSERT INTO lock_probe VALUES ('nested')")
        with database.atomic():
            with write_transaction():
                database.execute_sql("INSERT INTO lock_probe VALUES ('inner')")
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        with write_transaction():
            database.execute_sql("INSERT INTO lock_probe VALUES ('rolled back')")
            raise RuntimeError("boom")
    assert not lock.locked()
    done = []

    def other():
        with write_transaction():
            database.execute_sql("INSERT INTO lock_probe VALUES ('other')")
        dbmod.close_connection()
        done.append(1)
    th = threading.Thread(target=other)
    th.start()
    th.join(2)
    assert done, "another thread could not start a write transaction"
    rows = {r[0] for r in database.execute_sql("SELECT who FROM lock_probe").fetchall()}
    assert rows == {"nested", "inner", "other"}


@pytest.mark.db
def test_prepared_select_gives_what_the_query_gives(ctx):
    """Prepared (issue 15): the SQL built once and run with new values returns the same row
    as the peewee query, converted (sealed phone, date), not dirty; None when none matches;
    the query's order holds (the latest exam of an accession number)."""
    import datetime as dt

    from models.db import Prepared
    from models.schema import Exam, InboundMessage, Patient
    with write_transaction():
        p = Patient.create(patient_id="PREP1", name="张伟", phone="13800138000",
                           birth_date=dt.date(1980, 3, 7), sex="M")
        Patient.create(patient_id="PREP2", name="王芳")
        older = Exam.create(patient=p, accession_number="ACC-PREP", modality="CT")
        newer = Exam.create(patient=p, accession_number="ACC-PREP", modality="MR")
    by_id = Prepared(lambda pid: Patient.select().where(Patient.patient_id == pid), "pid")
    for pid in ("PREP1", "PREP2", "PREP1"):
        got, want = by_id.first(pid=pid), Patient.get(Patient.patient_id == pid)
        assert got.__data__ == want.__data__ and not got.is_dirty()
    got = by_id.first(pid="PREP1")
    assert got.phone == "13800138000" and got.birth_date == dt.date(1980, 3, 7)
    assert by_id.first(pid="nobody") is None
    latest = Prepared(lambda acc: Exam.select().where(Exam.accession_number == acc)
                      .order_by(Exam.id.desc()), "acc")
    assert latest.first(acc="ACC-PREP").id == newer.id != older.id
    assert latest.first(acc="x' OR '1'='1") is None          # a value, never SQL
    InboundMessage.create(channel="hl7", control_id="PREP-C1", raw="x", outcome="applied")
    inbound = Prepared(lambda c: InboundMessage.select(InboundMessage.id, InboundMessage.outcome)
                       .where(InboundMessage.control_id == c), "c")   # a field named 'raw'
    assert inbound.first(c="PREP-C1").outcome == "applied"
    with pytest.raises(ValueError):
        Prepared(lambda pid: Patient.select().where(Patient.patient_id == "fixed"),
                 "pid").first(pid="PREP1")


def test_a_thread_keeps_its_sqlite_connection_between_calls(sqlite_db):
    """Was (issue 17): every call opened a connection and ran five PRAGMAs (1.7 ms), then
    closed it. A call that failed inside a transaction leaves none open behind it."""
    from models.db import connection
    dbmod.close_connection()

    def conn_in_other_thread(out):
        with connection():
            out.append(database.connection())
    with connection():
        first = database.connection()
    with connection():
        assert database.connection() is first
    seen = []
    t = threading.Thread(target=conn_in_other_thread, args=(seen,))
    t.start()
    t.join()
    assert seen and seen[0] is not first                  # one per thread
    with connection():
        database.execute_sql("BEGIN")                     # a call that never finished
        database.execute_sql("INSERT INTO lock_probe VALUES ('left open')")
    assert not first.in_transaction                       # rolled back: no lock kept
    with connection():
        n = database.execute_sql("SELECT count(*) FROM lock_probe WHERE who = 'left open'")
        assert n.fetchone()[0] == 0
