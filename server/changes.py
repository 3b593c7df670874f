"""Every process honours access-relevant changes made by any node within change_poll_ms.

A thread per server process reads the change marker (models/changes.py: one row, one
primary-key SELECT) every `change_poll_ms`; when its number moved, it drops the process's
caches that decide access: the principals of session cookies and API tokens
(server/auth.py), the exams' image switch and patient (server/render_service.py), the peer
table (models/peers.py) and the stored run-time settings (re-applied at once). The next
request then decides on what the database says now. Requests themselves never query the
marker, so it costs each process a few queries a second however busy it is.

While the database does not answer the marker cannot be read: one warning, then the caches
run out by their own lifetimes (1 s for access facts) as before; the first read after the
outage drops them all, since changes may have been missed.
"""
from __future__ import annotations

import logging
import threading

from models.db import connection

log = logging.getLogger(__name__)


class ChangeWatch:
    def __init__(self, ctx, interval_s: float):
        self.ctx = ctx
        self.interval_s = interval_s
        self.seen: int | None = None     # None: not read yet, or unreadable since
        self._primed = False
        self.changes = 0                 # how many times the caches were dropped
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Read the marker once (blocking); drop the caches if it moved. True if it did."""
        from models.changes import generation
        try:
            with connection():
                now = generation()
        except Exception as exc:  # noqa: BLE001 - the database is away: say so once
            if not self._failing:
                log.warning("change marker unreadable (%s): access caches run out by their "
                            "lifetimes until the database answers", type(exc).__name__)
                self._failing = True
            self.seen = None             # whatever it says next, drop the caches then
            return False
        self._failing = False
        if self._primed and now == self.seen:
            return False
        moved = self._primed             # the very first read only learns the number
        self._primed, self.seen = True, now
        if moved:
            self.forget()
        return moved

    def forget(self) -> None:
        """Drop every cache that decides access in this process."""
        self.changes += 1
        ctx = self.ctx
        if ctx.principals is not None:
            ctx.principals.clear()
        if ctx.renders is not None:
            ctx.renders.forget_access()
        from models.peers import PEERS
        from models.staff import forget_settings_cache
        PEERS.forget()
        forget_settings_cache()
        try:
            from . import settings
            with connection():
                settings.refresh(ctx)
        except Exception as exc:  # noqa: BLE001 - the 5-s settings refresh tries again
            log.debug("settings refresh after a change failed: %s", exc)

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - never let the watch die
                log.exception("change watch")

    def start(self) -> "ChangeWatch":
        self.check()                     # the number at start: nothing to drop yet
        self._thread = threading.Thread(target=self.run, name="change-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


async def start_background(ctx, primary: bool) -> ChangeWatch:
    """Every server process, primary or not, watches the marker."""
    import asyncio
    watch = ChangeWatch(ctx, ctx.config.change_poll_ms / 1000.0)
    await asyncio.get_running_loop().run_in_executor(None, watch.start)
    ctx.change_watch = watch
    _watches.append(watch)
    return watch


_watches: list[ChangeWatch] = []


async def stop_background() -> None:
    """A stopping server (server/cli.py drain) ends its watcher thread."""
    import asyncio
    while _watches:
        await asyncio.get_running_loop().run_in_executor(None, _watches.pop().stop)
