"""N identical nodes (issue 17): each outbox message reaches the receiver exactly once however
many outbox workers run. Rows are claimed row by row (SELECT … FOR UPDATE SKIP LOCKED on
MariaDB, a conditional UPDATE under SQLite's write lock) and a claim runs out, so a message
whose worker died mid-delivery is delivered by another worker later.

The workers here are real processes on one database, each running the real delivery code
(adapters/outbox.py OutboxWorker) without the 'outbox' lease, as two nodes would when a
lease changes hands while its old holder is still delivering; the receiver is a real MLLP
server run by the test (tests/integration/test_import_outbox.py Receiver)."""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time

import pytest

from models.schema import Outbox

from ..conftest import ROOT
from .test_import_outbox import Receiver

pytestmark = pytest.mark.db

WORKER = r"""
import asyncio, os, sys, time
root, url, barrier = sys.argv[1:4]
claim_s = float(sys.argv[4]) if len(sys.argv) > 4 else None
sys.path.insert(0, root)
from models import db
db.connect(url)
from adapters.outbox import OutboxSettings, OutboxWorker
from models.schema import Outbox
print("READY", flush=True)
while not os.path.exists(barrier):
    time.sleep(0.001)

def pending():
    with db.connection():
        return Outbox.select().where(Outbox.status == "pending").count()

async def main():
    kw = {} if claim_s is None else {"claim_s": claim_s}
    w = OutboxWorker(OutboxSettings(max_attempts=3, backoff_s=1, backoff_max_s=1, **kw))
    loop = asyncio.get_running_loop()
    if claim_s is not None:              # a worker that will die mid-delivery
        w.start()
        await asyncio.Event().wait()
    while True:
        if await w.run_once() == 0:
            if await loop.run_in_executor(None, pending) == 0:
                break
            await asyncio.sleep(0.05)
    print("DONE", w.delivered, flush=True)

asyncio.run(main())
"""


def spawn(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(ROOT), *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def queue_messages(port: int, n: int) -> set[str]:
    """n 'film published' messages to the receiver; returns their control IDs (MSH-10)."""
    from adapters.outbox import film_published_hl7
    from models.db import write_transaction
    from models.integration import enqueue
    ctrl = set()
    with write_transaction():
        for i in range(n):
            key = f"film:{i + 1}:{i:012d}:127.0.0.1:{port}"
            payload = {"kind": "film_published", "accession": f"ACC{i}", "patient_id": "P1",
                       "study_uid": f"1.2.826.0.1.3680043.8.498.{i + 1}",
                       "report_status": "final", "exam_id": i + 1}
            assert enqueue("hl7", f"127.0.0.1:{port}", key, payload)
            ctrl.add(film_published_hl7(payload, key).split(b"\r")[0].split(b"|")[9].decode())
    return ctrl


def control_ids(rec: Receiver) -> collections.Counter:
    return collections.Counter(text.split("\r")[0].split("|")[9] for text in rec.received)


def test_two_workers_deliver_each_message_exactly_once(ctx, database_url, loop_thread,
                                                       tmp_path):
    rec = Receiver(loop_thread)
    expected = queue_messages(rec.port, 100)
    assert len(expected) == 100
    barrier = tmp_path / "go"
    workers = [spawn(database_url, barrier) for _ in range(2)]
    try:
        for w in workers:
            assert w.stdout.readline().strip() == "READY", w.stderr.read()[-2000:]
        barrier.touch()                                  # both start at the same moment
        results = [w.communicate(timeout=180) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(10)
    for w, (out, err) in zip(workers, results):
        assert w.returncode == 0 and "DONE" in out, err[-2000:]
    seen = control_ids(rec)
    twice = sorted(c for c, k in seen.items() if k > 1)
    assert not twice, f"{len(twice)} of 100 delivered more than once: {twice[:5]}"
    assert set(seen) == expected
    assert Outbox.select().where(Outbox.status == "sent").count() == 100
    delivered = [int(out.split()[-1]) for out, _ in results]
    assert sum(delivered) == 100, delivered
    rec.close()


def test_a_message_whose_worker_died_mid_delivery_is_delivered_after_the_claim_runs_out(
        ctx, database_url, loop_thread, tmp_path):
    """A worker claims a message, sends it to a receiver that never answers, and is killed
    (SIGKILL) before the ACK: nobody else touches the row while the claim holds; once it has
    run out another worker delivers it (at least once: the receiver got it twice, the second
    time acknowledged, with the same control ID to de-duplicate by)."""
    from adapters.outbox import OutboxSettings, OutboxWorker
    rec = Receiver(loop_thread, answer=None)           # reads, never ACKs
    (ctrl,) = queue_messages(rec.port, 1)
    barrier = tmp_path / "go"
    barrier.touch()
    claim_s = 4.0
    dying = spawn(database_url, barrier, claim_s)       # its claims last 4 s unless renewed
    try:
        assert dying.stdout.readline().strip() == "READY"
        deadline = time.monotonic() + 30
        while not rec.received and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rec.received, "the first worker never sent the message"
        time.sleep(claim_s + 1)                         # its claim is renewed while it lives
        row = Outbox.get()
        assert row.status == "pending" and row.claimed_by.split(":")[1] == str(dying.pid)
        other = OutboxWorker(OutboxSettings(max_attempts=3, backoff_s=1, backoff_max_s=1))
        assert loop_thread.run(other.run_once()) == 0   # claimed by a live worker: left alone
        os.kill(dying.pid, signal.SIGKILL)
        dying.wait(10)
        killed = time.monotonic()
    finally:
        if dying.poll() is None:
            dying.kill()
            dying.wait(10)
    rec.answer = "AA"
    while loop_thread.run(other.run_once()) == 0:
        assert time.monotonic() - killed < 10, "the dead worker's claim never ran out"
        time.sleep(0.1)
    assert time.monotonic() - killed <= claim_s + 2       # whole seconds on MariaDB
    row = Outbox.get()
    assert row.status == "sent" and row.claimed_by == "" and row.claimed_until is None
    assert control_ids(rec) == {ctrl: 2}
    rec.close()


def test_a_worker_whose_claim_ran_out_changes_nothing_and_a_clean_stop_gives_claims_up(
        ctx, loop_thread):
    """Worker A's claim ran out (paused, cut off) and B delivered the message: A's late
    failure report neither reschedules nor re-counts it. A worker that stops cleanly gives
    its claims up at once, so the next worker does not wait for them to run out."""
    import datetime as dt

    from adapters.outbox import OutboxSettings, OutboxWorker
    from models.db import write_transaction
    from models.integration import (enqueue, outbox_claim, outbox_mark_failed,
                                    outbox_mark_sent)
    from models.schema import utcnow
    with write_transaction():
        enqueue("hl7", "127.0.0.1:9", "late:1", {"kind": "film_published"})
        enqueue("hl7", "127.0.0.1:9", "late:2", {"kind": "film_published"})
    (row, second) = outbox_claim("node-a:1:aa", 50, 60)
    assert outbox_claim("node-b:2:bb", 50, 60) == []           # both held by A
    Outbox.update(claimed_until=utcnow() - dt.timedelta(seconds=1)).where(
        Outbox.id == row.id).execute()                          # A's claim ran out
    (taken,) = outbox_claim("node-b:2:bb", 50, 60)
    assert taken.id == row.id
    outbox_mark_sent(taken.id)
    assert outbox_mark_failed(row.id, "timeout", max_attempts=3, backoff_s=1,
                              backoff_max_s=1, holder="node-a:1:aa") == "sent"
    after = Outbox.get_by_id(row.id)
    assert after.status == "sent" and after.attempts == 1 and after.last_error == ""
    # a clean stop of the worker holding the second message gives it up
    worker = OutboxWorker(OutboxSettings(), holder="node-a:1:aa")
    loop_thread.run(worker.stop())
    assert Outbox.get_by_id(second.id).claimed_by == ""
    assert [r.id for r in outbox_claim("node-b:2:bb", 50, 60)] == [second.id]
