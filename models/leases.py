"""Leases: one holder at a time for work that must run once in the whole deployment.

One primitive, `claim_row`: a single conditional UPDATE in a write transaction, which
takes a lease column pair (holder, until) when it is free, expired or (when renewing)
already ours. It is used by

- the role leases of this module (table `lease`, one row per job: outbox delivery,
  integrity scrub, folder watcher, WeChat token refresh), held by `SingletonJob`;
- the WeChat access-token refresh lease of models/wechat.py (on the credential row).

A role lease is renewed every RENEW_S = 10 s and expires EXPIRE_S = 30 s after its last
renewal. The holder is `host:pid:random`, so two processes (or two machines) never share
one. A process that fails to renew (someone else holds it, or the database does not
answer) stops its job; a process waiting for the lease tries again the moment the lease
expires, so when the holder dies another process takes over at most EXPIRE_S after the
holder's last renewal. Times come from the machines' clocks (UTC, whole seconds): keep the
machines of a cluster synchronised (NTP); a skew well below 20 s is harmless.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import os
import secrets
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import peewee as pw

from .db import database, outage, unavailable, write_transaction
from .schema import BaseModel, utcnow

log = logging.getLogger(__name__)

RENEW_S = 10.0
EXPIRE_S = 30.0


class Lease(BaseModel):
    """Who runs a singleton job (name) and until when, unless renewed."""
    name = pw.CharField(max_length=64, unique=True)
    holder = pw.CharField(max_length=96, default="")
    expires_at = pw.DateTimeField(null=True)
    beats = pw.IntegerField(default=0)     # changes on every claim (MySQL counts changed rows)


LEASE_MODELS = [Lease]


def holder_id() -> str:
    """A name for this process no other process (here or on another machine) has."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


def claim_row(model, where, holder_field, until_field, holder: str, seconds: float, *,
              renew: bool = False, extra: dict | None = None) -> bool:
    """Take the lease columns (holder_field, until_field) of the row(s) matching `where`
    for `seconds`, in one conditional UPDATE: only when the lease is free or expired (or,
    with renew, already held by `holder`). True when this call holds it."""
    now = utcnow()
    free = until_field.is_null() | (until_field <= now)
    if renew:
        free |= (holder_field == holder)
    values = {holder_field: holder[:holder_field.max_length],
              until_field: now + dt.timedelta(seconds=seconds)}
    values.update(extra or {})
    with write_transaction():
        n = model.update(values).where(where & free).execute()
    return n == 1


def acquire(name: str, holder: str, seconds: float = EXPIRE_S) -> bool:
    """Take or renew the lease `name` (the row is made the first time)."""
    if claim_row(Lease, Lease.name == name, Lease.holder, Lease.expires_at, holder, seconds,
                 renew=True, extra={Lease.beats: Lease.beats + 1}):
        return True
    if Lease.select().where(Lease.name == name).exists():
        return False
    try:
        with write_transaction():
            Lease.insert(name=name, holder=holder[:96], beats=1,
                         expires_at=utcnow() + dt.timedelta(seconds=seconds)).execute()
    except pw.IntegrityError:
        return False              # another process made it first: it holds the lease
    return True


def release(name: str, holder: str) -> bool:
    """Give the lease up at once (a clean stop), if it is still ours."""
    with write_transaction():
        n = Lease.update(holder="", expires_at=None, beats=Lease.beats + 1).where(
            (Lease.name == name) & (Lease.holder == holder)).execute()
    return n == 1


def current(name: str) -> Lease | None:
    return Lease.get_or_none(Lease.name == name)


# the background role ------------------------------------------------------------------------
_pool = ThreadPoolExecutor(2, thread_name_prefix="lease")   # never queued behind slow work


async def _call(fn) -> None:
    res = fn()
    if inspect.isawaitable(res):
        await res


class SingletonJob:
    """Run a job in this process only while it holds the lease `name`.

    `start()` is called when the lease is taken and `stop()` when it is lost (both may be
    coroutine functions). Every process may run a SingletonJob for the same name; one of
    them holds the lease and runs the job, the others wait to take over.
    """

    def __init__(self, name: str, start: Callable, stop: Callable, *,
                 renew_s: float = RENEW_S, expire_s: float = EXPIRE_S,
                 holder: str | None = None):
        if renew_s >= expire_s:
            raise ValueError("a lease must be renewed before it expires")
        self.name, self.start_fn, self.stop_fn = name, start, stop
        self.renew_s, self.expire_s = renew_s, expire_s
        self.holder = holder or holder_id()
        self.held = False
        self.task: asyncio.Task | None = None

    def begin(self) -> "SingletonJob":
        self.task = asyncio.get_running_loop().create_task(self.run())
        return self

    def _beat(self) -> tuple[bool, dt.datetime | None]:
        with database.connection_context():
            if acquire(self.name, self.holder, self.expire_s):
                return True, None
            row = current(self.name)
            return False, row.expires_at if row is not None else None

    def _release(self) -> None:
        try:
            with database.connection_context():
                release(self.name, self.holder)
        except Exception as exc:  # noqa: BLE001 - it expires by itself anyway
            log.info("lease %s not released: %s", self.name, exc)

    def _standby_wait(self, until: dt.datetime | None) -> float:
        """Sleep until the holder's lease expires (checked again every renew_s at most)."""
        if until is None:
            return self.renew_s
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        return min(self.renew_s, max(0.05, (until - now).total_seconds() + 0.05))

    async def _set(self, held: bool) -> None:
        if held:
            log.info("lease %s taken by %s: starting the job", self.name, self.holder)
            try:
                await _call(self.start_fn)
            except Exception:  # noqa: BLE001 - let another process (or a later beat) try
                log.exception("job %s failed to start", self.name)
                await asyncio.get_running_loop().run_in_executor(_pool, self._release)
                return
        else:
            log.warning("lease %s lost by %s: stopping the job", self.name, self.holder)
            try:
                await _call(self.stop_fn)
            except Exception:  # noqa: BLE001
                log.exception("job %s failed to stop", self.name)
        self.held = held

    async def run(self) -> None:
        beat = None
        try:
            while True:
                beat = _pool.submit(self._beat)
                try:
                    held, until = await asyncio.wrap_future(beat)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - no answer: not ours any more
                    if unavailable(exc):
                        outage.failed(exc)  # one line per outage (models/db.py)
                    else:
                        log.warning("lease %s: %s: %s", self.name, type(exc).__name__, exc)
                    held, until = False, None
                if held != self.held:
                    await self._set(held)
                await asyncio.sleep(self.renew_s if self.held else self._standby_wait(until))
        finally:
            if beat is not None and not beat.done():
                try:                  # a claim in flight when stopped: let it end, give it back
                    beat.result(timeout=self.expire_s)
                except BaseException:  # noqa: BLE001 - shutting down
                    pass
            if self.held:
                self.held = False
                try:
                    await _call(self.stop_fn)
                except BaseException:  # noqa: BLE001 - shutting down
                    pass
            self._release()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None
