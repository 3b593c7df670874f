"""Background maintenance: the integrity scrub of stored originals and report PDFs.

Every original DICOM file and report PDF was stored with its SHA-256. Two checks keep that
promise ("originals are sacred"):

- on read: the render service re-hashes an original before decoding it
  (server/render_service.py `verify_original`); a mismatch is refused (HTTP 503), never
  served;
- on schedule: `scrub_once` re-hashes every file (conf: integrity_scrub_hours), at most
  integrity_scrub_mb_per_s, in a thread of its own (never a request pool's database thread),
  in the one node holding the 'integrity_scrub' lease, `integrity_scrub_hours` after the last
  pass that finished anywhere (its audit record `integrity.scrub`), so files nobody looked
  at are checked too.

After each scrub, `prune_versions_once` deletes the superseded files of resent instances
older than dicom_version_retention_days (models/versions.py).

Every minute the primary process of each machine anchors the audit chain head outside the
database (`anchor_once`, models/audit.py Auditor.anchor: var/audit-anchor.log and syslog).

A mismatch or a missing file becomes an IntegrityFinding (shown to system and security
admins at /api/security/integrity until resolved), an audit record `integrity.mismatch` and
an ERROR log line (which the hospital's log monitoring picks up).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from models.catalog import instances_after, reports_with_pdf
from models.clock import utcnow
from models.db import connection, write_transaction
from models.leases import SingletonJob
from models.security import record_finding
from models.versions import prune_versions
from models.storage import StorageError

log = logging.getLogger(__name__)

FIRST_SCRUB_DELAY_S = 600          # let start-up and the demo import settle first
ANCHOR_EVERY_S = 60                # the audit head is anchored outside the database this often
BATCH = 200


def report_mismatch(ctx, *, kind: str, object_id: str, relpath: str, expected: str,
                    actual: str, source: str) -> bool:
    """Record a finding (once per object while open) and its audit event (blocking)."""
    with connection():
        with write_transaction():
            _finding, created = record_finding(kind, object_id, relpath, expected, actual,
                                               source)
            if created:
                ctx.auditor.record("integrity.mismatch", actor_kind="system",
                                   object_type=kind, object_id=object_id[:128],
                                   outcome="missing" if not actual else "mismatch",
                                   detail=f"{relpath} expected {expected[:16]}… "
                                          f"found {actual[:16] or 'nothing'} ({source})")
    if created:
        log.error("integrity: %s %s %s (%s)", kind, object_id,
                  "missing" if not actual else "SHA-256 mismatch", source)
    return created


def install_integrity_hook(ctx) -> None:
    """Make the render service report the originals it refuses."""
    renders = getattr(ctx, "renders", None)
    if renders is None or getattr(renders, "integrity_hook", "absent") == "absent":
        return

    def hook(ref, actual):
        report_mismatch(ctx, kind="instance", object_id=ref.sop_uid, relpath=ref.relpath,
                        expected=ref.sha256, actual=actual, source="read")
    renders.integrity_hook = hook


def _check(ctx, relpath: str, expected: str) -> str | None:
    """The actual hash if it differs from expected ("" if missing), else None."""
    try:
        actual = ctx.storage.sha256(relpath)
    except (FileNotFoundError, StorageError):
        actual = ""
    return None if actual == expected else actual


class _Throttle:
    """Keeps reading at or below `bytes_per_s` (0: unlimited) by sleeping between files."""

    def __init__(self, bytes_per_s: float):
        self.rate, self.done, self.t0 = bytes_per_s, 0, time.monotonic()

    def read(self, n: int) -> None:
        self.done += max(0, n)
        if self.rate:
            ahead = self.done / self.rate - (time.monotonic() - self.t0)
            if ahead > 0:
                time.sleep(min(ahead, 5.0))


def scrub_once(ctx, *, pause_s: float = 0.0, bytes_per_s: float = 0) -> dict:
    """Re-hash every original and report PDF (blocking). Returns counts."""
    checked = mismatches = 0
    t0 = time.monotonic()
    last = 0
    throttle = _Throttle(bytes_per_s)
    while True:
        with connection():
            rows = instances_after(last, BATCH)
        if not rows:
            break
        for r in rows:
            last = r.id
            checked += 1
            throttle.read(r.file_size or 0)
            actual = _check(ctx, r.file_path, r.sha256)
            if actual is not None:
                mismatches += 1
                report_mismatch(ctx, kind="instance", object_id=r.sop_uid,
                                relpath=r.file_path, expected=r.sha256, actual=actual,
                                source="scrub")
        if pause_s:
            time.sleep(pause_s)
    with connection():
        reports = reports_with_pdf()
    for r in reports:
        if not r.pdf_sha256:
            continue
        checked += 1
        actual = _check(ctx, r.pdf_path, r.pdf_sha256)
        if actual is not None:
            mismatches += 1
            report_mismatch(ctx, kind="report", object_id=str(r.id), relpath=r.pdf_path,
                            expected=r.pdf_sha256, actual=actual, source="scrub")
    took = time.monotonic() - t0
    log.info("integrity scrub: %d files checked, %d problems, %.0f s", checked, mismatches,
             took)
    with connection():
        ctx.auditor.record("integrity.scrub", actor_kind="system",
                           outcome="ok" if not mismatches else "mismatch",
                           detail=f"{checked} files checked, {mismatches} problems, "
                                  f"{took:.0f} s")
    return {"checked": checked, "mismatches": mismatches, "seconds": round(took, 1)}


def next_scrub_in(hours: int, now: dt.datetime | None = None) -> float:
    """Seconds until the next scrub is due: `hours` after the last one that finished in the
    deployment (its audit record), so restarts and lease moves do not start one each time;
    FIRST_SCRUB_DELAY_S after start-up when none ever ran or one is overdue."""
    from models.audit import last_time_of
    with connection():
        last = last_time_of("integrity.scrub")
    if last is None:
        return FIRST_SCRUB_DELAY_S
    due = last + dt.timedelta(hours=hours)
    return max(FIRST_SCRUB_DELAY_S, (due - (now or utcnow())).total_seconds())


def prune_versions_once(ctx) -> int:
    """Delete superseded instance-version files older than dicom_version_retention_days
    (0: keep forever; models/versions.py). Runs after each scrub (blocking)."""
    with connection():
        return prune_versions(ctx.storage, ctx.config.dicom_version_retention_days)


# the scrub's own thread: a pass takes minutes to hours and must not hold one of the
# request pools' database threads (issue 17)
_scrub_pool = ThreadPoolExecutor(1, thread_name_prefix="scrub")


async def _scrub_loop(ctx, hours: int) -> None:
    loop = asyncio.get_running_loop()
    rate = ctx.config.integrity_scrub_mb_per_s << 20
    while True:
        try:
            wait = await loop.run_in_executor(_scrub_pool, next_scrub_in, hours)
        except Exception:  # noqa: BLE001 - the database may be away: try again later
            log.warning("integrity scrub: cannot read when the last one ran; retry in 10 min")
            wait = FIRST_SCRUB_DELAY_S
        await asyncio.sleep(wait)
        try:
            await loop.run_in_executor(_scrub_pool,
                                       lambda: scrub_once(ctx, bytes_per_s=rate))
        except Exception:  # noqa: BLE001 - the next round tries again
            log.exception("integrity scrub failed")
        try:
            await loop.run_in_executor(_scrub_pool, lambda: prune_versions_once(ctx))
        except Exception:  # noqa: BLE001
            log.exception("pruning instance versions failed")


_tasks: list = []
_jobs: list = []
_anchor_tasks: list = []


def anchor_once(ctx):
    """Anchor the audit chain head outside the database (models/audit.py Auditor.anchor):
    a signed line in var/audit-anchor.log and the system journal, when the head moved."""
    with connection():
        return ctx.auditor.anchor(force=False)


async def _anchor_loop(ctx) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            await loop.run_in_executor(ctx.db_executor, lambda: anchor_once(ctx))
        except Exception:  # noqa: BLE001 - the next minute tries again
            log.exception("anchoring the audit chain head failed")
        await asyncio.sleep(ANCHOR_EVERY_S)


async def start_background(ctx, primary: bool) -> None:
    """Started by `serve`: the read check in every process, the audit anchor in the primary
    process of each machine (each machine keeps its own anchor file), the scrub in the one
    process of the deployment holding the 'integrity_scrub' lease."""
    install_integrity_hook(ctx)
    if primary and getattr(ctx.auditor, "anchor_file", None) is not None:
        _anchor_tasks.append(asyncio.get_running_loop().create_task(_anchor_loop(ctx)))
    hours = ctx.config.integrity_scrub_hours
    if hours <= 0:
        return

    def start():
        _tasks.append(asyncio.get_running_loop().create_task(_scrub_loop(ctx, hours)))
        log.info("integrity scrub every %d h (first in %d s)", hours, FIRST_SCRUB_DELAY_S)

    def stop():
        # a pass already running in the db pool finishes; no new one starts here
        while _tasks:
            _tasks.pop().cancel()
    _jobs.append(SingletonJob("integrity_scrub", start, stop).begin())


async def stop_background() -> None:
    while _anchor_tasks:
        _anchor_tasks.pop().cancel()
    while _jobs:
        await _jobs.pop().close()
