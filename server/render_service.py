"""Glue between HTTP and render/: instance lookup, caches, the render thread pool.

Decoded pixels, volumes and encoded images each live in a byte-budgeted LRU (conf:
decoded_cache_mb, volume_cache_mb, jpeg_cache_mb). Decoding and rendering run in the render
pool (conf: render_threads); the numba kernels release the GIL. Requests reach the pool
through FairScheduler (a queue per principal, light frames first, at most
render_heavy_per_principal MIP/MPR renders each); compressed originals decode in limited
worker processes (adapters/fast_copy.py decode_pool; max_decoded_mb, max_frame_mb).
"""
from __future__ import annotations

import functools
import hashlib
import concurrent.futures
import logging
import os
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from adapters.fast_copy import decode_keeping_copy, decode_pool, needs_limited_decode
from models import catalog
from models.catalog import NotFound
from models.db import connection
from render.cache import ByteLRU
from render.errors import RenderError

from . import metrics

log = logging.getLogger(__name__)

LOOKUP_TTL_S = 60.0      # where an instance's file is, its hash and size: change only when a
                         # resend makes a new version (forget_instance; new file name)
ACCESS_TTL_S = 1.0       # image switch and patient of an exam: changes apply within a second


@dataclass(frozen=True)
class InstanceRef:
    study_uid: str
    series_uid: str
    sop_uid: str
    exam_id: int
    patient_db_id: int
    relpath: str            # the original file (in the storage)
    fast_relpath: str       # a native-syntax copy for compressed originals (may not exist)
    sha256: str
    frames: int
    rows: int
    columns: int
    transfer_syntax: str
    images_enabled: bool


class _TTLCache:
    """Entries that live `ttl` seconds. `clear()` starts a new epoch: a value read from the
    database before the clear and put after it (`put(..., epoch=)` with the epoch taken
    before the read) is dropped, so a clear on a change (server/changes.py) is never undone
    by a lookup that was already under way."""

    def __init__(self, max_items: int, ttl: float):
        self._d: dict = {}
        self._lock = threading.Lock()
        self.max_items, self.ttl = max_items, ttl
        self.epoch = 0

    def get(self, key):
        hit = self._d.get(key)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        return None

    def put(self, key, value, epoch: int | None = None):
        with self._lock:
            if epoch is not None and epoch != self.epoch:
                return
            if len(self._d) >= self.max_items:
                self._d.clear()
            self._d[key] = (time.monotonic() + self.ttl, value)

    def pop(self, key):
        with self._lock:
            self._d.pop(key, None)

    def clear(self):
        with self._lock:
            self.epoch += 1
            self._d.clear()


class FrameRenderer:
    """Lookups, caches and 2D frame rendering."""

    def __init__(self, config, storage, executor):
        self.config = config
        self.storage = storage
        self.executor = executor
        self.decoded = ByteLRU(config.decoded_cache_mb << 20)
        self.volumes = ByteLRU(config.volume_cache_mb << 20)
        self.encoded = ByteLRU(config.jpeg_cache_mb << 20)
        self._instances = _TTLCache(200_000, LOOKUP_TTL_S)
        self._exam_state = _TTLCache(100_000, ACCESS_TTL_S)
        self._pool = None
        self._pool_lock = threading.Lock()
        self._series_loading: set = set()
        from concurrent.futures import ThreadPoolExecutor
        self._background = ThreadPoolExecutor(1, thread_name_prefix="lookup")
        self._display: dict[str, dict] = {}
        self._verified: dict[str, tuple] = {}      # relpath -> signature when hashed OK
        self._series = _TTLCache(20_000, LOOKUP_TTL_S)
        # decoded-size limit (max_decoded_mb): this process's header checks (import,
        # C-STORE, STOW-RS, render) and the decode workers' limit
        from render.decode import set_max_decoded_mb
        set_max_decoded_mb(config.max_decoded_mb, config.max_frame_mb)
        self.max_decoded_bytes = config.max_decoded_mb << 20
        self.scheduler = FairScheduler(config.render_threads,
                                       config.render_heavy_per_principal)
        self.loop_lag = LoopLag()

    # lookups (database, cached for a few seconds) ------------------------------------------
    def _ref(self, inst, series, exam) -> InstanceRef:
        return InstanceRef(
            study_uid=exam.study_uid, series_uid=series.series_uid, sop_uid=inst.sop_uid,
            exam_id=exam.id, patient_db_id=exam.patient_id,
            relpath=inst.file_path,
            fast_relpath=self.storage.fast_copy_of(inst.file_path),
            sha256=inst.sha256, frames=inst.frames, rows=inst.rows, columns=inst.columns,
            transfer_syntax=inst.transfer_syntax, images_enabled=bool(exam.images_enabled))

    def cached_instance(self, study_uid, series_uid, sop_uid) -> InstanceRef | None:
        return self._instances.get((study_uid, series_uid, sop_uid))

    def lookup_instance(self, study_uid, series_uid, sop_uid) -> InstanceRef:
        """Database lookup (run it off the event loop). Raises NotFound.

        A miss loads the whole series in one query: a viewer asks for its neighbours next."""
        key = (study_uid, series_uid, sop_uid)
        ref = self._instances.get(key)
        if ref is not None:
            return ref
        epoch = self._exam_state.epoch
        with connection():
            row = catalog.instance_by_uids(study_uid, series_uid, sop_uid)
        if row is None:
            raise NotFound("no such instance in this series and study")
        ref = self._ref(row, row.series, row.series.exam)
        self._instances.put(key, ref)
        self._exam_state.put(ref.exam_id, (ref.patient_db_id, ref.images_enabled), epoch)
        # The first image answers at once; its neighbours' facts load in the background
        # (one query for the series), since a viewer asks for them next.
        skey = (study_uid, series_uid)
        with self._pool_lock:
            if self._series.get(skey) is None and skey not in self._series_loading:
                self._series_loading.add(skey)
                self._background.submit(self._load_series_quietly, study_uid, series_uid)
        return ref

    def _load_series_quietly(self, study_uid, series_uid) -> None:
        try:
            self.lookup_series(study_uid, series_uid)
        except Exception:  # noqa: BLE001 - only a cache warm-up
            log.debug("series warm-up failed", exc_info=True)
        finally:
            with self._pool_lock:
                self._series_loading.discard((study_uid, series_uid))

    def lookup_series(self, study_uid, series_uid) -> list[InstanceRef]:
        """All instances of a series, in instance-number order. Raises NotFound."""
        key = (study_uid, series_uid)
        refs = self._series.get(key)
        if refs is not None:
            return refs
        epoch = self._exam_state.epoch
        with connection():
            rows = catalog.series_instances(study_uid, series_uid)
        if not rows:
            raise NotFound("no such series in this study")
        refs = [self._ref(r, r.series, r.series.exam) for r in rows]
        self._series.put(key, refs)
        for r in refs:
            self._instances.put((r.study_uid, r.series_uid, r.sop_uid), r)
        self._exam_state.put(refs[0].exam_id, (refs[0].patient_db_id, refs[0].images_enabled),
                             epoch)
        return refs

    # access facts: they change (image switch, patient merge), so they are cached for a
    # second at most, per exam rather than per image, and dropped at once when the change
    # marker moves (server/changes.py) --------------------------------------------
    def cached_exam_state(self, exam_id: int) -> tuple[int, bool] | None:
        return self._exam_state.get(exam_id)

    def exam_state(self, exam_id: int) -> tuple[int, bool]:
        """(patient database id, images enabled) of an exam (blocking)."""
        hit = self._exam_state.get(exam_id)
        if hit is not None:
            return hit
        epoch = self._exam_state.epoch
        with connection():
            row = catalog.exam_access_facts(exam_id)
        if row is None:
            raise NotFound("no such exam")
        state = (row[0], bool(row[1]))
        self._exam_state.put(exam_id, state, epoch)
        return state

    def forget_exam(self, exam_id: int) -> None:
        self._exam_state.pop(exam_id)

    def forget_access(self) -> None:
        """An access-relevant change somewhere in the deployment (server/changes.py): every
        exam's image switch and patient are read again."""
        self._exam_state.clear()

    def forget_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> None:
        """A resend made a new version: look its file up again (decoded pixels, volumes and
        rendered images are keyed by the file or its hash, so the old ones are not served)."""
        self._instances.pop((study_uid, series_uid, sop_uid))
        self._series.pop((study_uid, series_uid))

    def lookup_study_series(self, study_uid) -> list[str]:
        with connection():
            uids = catalog.study_series_uids(study_uid)
        if not uids:
            raise NotFound("no exam with this Study Instance UID, or it has no images")
        return uids

    # integrity (security) ------------------------------------------------------------------
    # Called with (ref, actual_sha256 or "" if missing) when an original fails its check;
    # server/handlers/security.py installs one that records a finding and an audit event.
    integrity_hook = None

    def verify_original(self, ref: InstanceRef) -> None:
        """Raise OriginalIntegrityError unless the original's SHA-256 matches the database.

        Hashed at the first decode or download of each instance in this process, then again
        whenever the file changed since (storage.signature: inode, size, mtime, ctime), so a
        byte flipped after a first view is caught at the next read; the scheduled scrub
        re-checks every file."""
        try:
            sig = self.storage.signature(ref.relpath)
        except FileNotFoundError:
            sig = None
        if sig is not None and self._verified.get(ref.relpath) == sig:
            return
        try:
            actual = self.storage.sha256(ref.relpath)
        except FileNotFoundError:
            actual = ""
        if actual == ref.sha256:
            if len(self._verified) > 1_000_000:
                self._verified.clear()
            if sig is not None:
                self._verified[ref.relpath] = sig
            return
        self._verified.pop(ref.relpath, None)
        log.error("integrity: original of SOP %s %s", ref.sop_uid,
                  "is missing" if not actual else "does not match its SHA-256")
        if self.integrity_hook is not None:
            try:
                self.integrity_hook(ref, actual)
            except Exception:  # noqa: BLE001 - the refusal below must happen regardless
                log.exception("integrity: could not record the finding")
        raise OriginalIntegrityError()

    # pixels --------------------------------------------------------------------------------
    def image(self, ref: InstanceRef):
        from render.decode import load_image

        def load():
            self.verify_original(ref)       # never decode a tampered or missing original
            fast = self.storage.exists(ref.fast_relpath)
            t0 = time.perf_counter()
            if not fast and needs_limited_decode(ref.transfer_syntax):
                # Untrusted compressed data decodes only in a worker process with an
                # address-space limit (issue 14); the decoders also hold the GIL for
                # 10-40 ms a frame, so the event loop keeps answering meanwhile. The worker
                # leaves a fast copy behind.
                img = self._decode_in_worker(ref)
                metrics.DECODE.labels("worker").observe(time.perf_counter() - t0)
                return img
            with self.storage.path_or_file(ref.fast_relpath if fast else ref.relpath) as src:
                img = load_image(src, self.max_decoded_bytes)
            metrics.DECODE.labels("fast_copy" if fast else "original").observe(
                time.perf_counter() - t0)
            return img
        # keyed by the file (each version of an instance has its own name)
        return self.decoded.get_or_load(ref.relpath, load)

    def _decode_in_worker(self, ref: InstanceRef):
        pool = self._decode_pool()
        try:
            return pool.submit(decode_keeping_copy, self.storage, ref.relpath,
                               ref.fast_relpath, self.max_decoded_bytes).result()
        except MemoryError:
            log.warning("decode of SOP %s ran out of the worker's memory limit", ref.sop_uid)
            raise DecodeRefused() from None
        except BrokenProcessPool:
            # a decoder crashed its worker: a fresh pool for the next request
            log.warning("a decode worker died decoding SOP %s; pool restarted", ref.sop_uid)
            with self._pool_lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise DecodeRefused() from None

    def warm_up(self) -> None:
        """Load the numba kernels and the JPEG encoder once and start the decode workers, so
        the first real request of a worker does not pay for them."""
        import numpy as np

        from render.decode import DecodedImage
        from render.encode import encode_jpeg
        from render.pipeline import render_frame
        img = DecodedImage(pixels=np.zeros((1, 64, 64), np.int16), photometric="MONOCHROME2",
                           is_color=False, bits_stored=16, signed=True)
        for vp in (None, (32, 32), (100, 100)):
            encode_jpeg(render_frame(img, 0, window=(40, 400), viewport=vp), 85)
        rgb = DecodedImage(pixels=np.zeros((1, 64, 64, 3), np.uint8), photometric="RGB",
                           is_color=True)
        encode_jpeg(render_frame(rgb, 0, viewport=(32, 32)), 85)
        self.start_decode_workers()

    def start_decode_workers(self) -> None:
        """Start every decode worker now rather than on the first compressed frame: each
        loads numpy, pydicom and the decoders (about 0.5 s of CPU), which the first
        never-seen compressed series after a start would otherwise pay while it is being
        scrolled, its first frames waiting for a process to start. Waits (at most 60 s) until
        they are up: `serve` opens its port afterwards, so the first requests after a restart
        do not compete with the workers' start-up for the CPU."""
        pool = self._decode_pool()
        # the pool starts a process for each job submitted while none is idle
        jobs = [pool.submit(os.getpid) for _ in range(self._decode_workers())]
        concurrent.futures.wait(jobs, timeout=60)

    def display_defaults(self, ref: InstanceRef) -> dict:
        """The file's own window, frame rate and colour, read from the header only (cached),
        so a viewer can show the first image without asking for image facts first."""
        hit = self._display.get(ref.relpath)
        if hit is not None:
            return hit
        from render.decode import read_display_defaults
        out = {"window": None, "fps": None, "is_color": False}
        try:
            with self.storage.open(ref.relpath) as fh:
                read_display_defaults(fh, into=out)
        except Exception:  # noqa: BLE001 - facts are a convenience; the image info has them too
            log.info("no display defaults for SOP %s", ref.sop_uid)
        if len(self._display) > 100_000:
            self._display.clear()
        self._display[ref.relpath] = out
        return out

    def _decode_pool(self):
        with self._pool_lock:
            if self._pool is None:
                self._pool = decode_pool(self._decode_workers(), self.max_decoded_bytes)
            return self._pool

    def _decode_workers(self) -> int:
        return self.config.decode_processes or os.cpu_count() or 1

    def close(self) -> None:
        self._background.shutdown(wait=False, cancel_futures=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def render(self, ref: InstanceRef, frame: int, *, window=None, viewport=None,
               quality: int = 85, fmt: str = "jpeg", rotate: int = 0, flip_h: bool = False,
               flip_v: bool = False, invert: bool = False) -> bytes:
        """Render one frame to JPEG/PNG bytes (blocking: call it in the render pool)."""
        from render.encode import encode_jpeg, encode_png
        from render.pipeline import render_frame
        img = self.image(ref)
        t0 = time.perf_counter()
        arr = render_frame(img, frame, window=window, viewport=viewport, rotate=rotate,
                           flip_h=flip_h, flip_v=flip_v, invert=invert)
        out = encode_png(arr) if fmt == "png" else encode_jpeg(arr, quality)
        metrics.RENDER.labels("frame").observe(time.perf_counter() - t0)
        return out

    async def run(self, fn, *args, **kwargs):
        import asyncio
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    async def run_fair(self, principal: str, heavy: bool, fn, *args, priority: int = 1,
                       **kwargs):
        """As run(), but scheduled by priority and fairly between principals
        (FairScheduler)."""
        import asyncio
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self.scheduler.push(principal, (waiter, functools.partial(fn, *args, **kwargs)),
                            heavy, priority)
        self._start_ready(loop)
        try:
            return await waiter
        except asyncio.CancelledError:
            waiter.cancel()         # a job not started yet is skipped when its turn comes
            raise

    def _start_ready(self, loop) -> None:
        while True:
            picked = self.scheduler.pop()
            if picked is None:
                return
            key, (waiter, call), heavy = picked
            if waiter.done():                       # the client went away meanwhile
                self.scheduler.done(key, heavy)
                continue
            fut = loop.run_in_executor(self.executor, _timed, call)

            def finished(f, key=key, heavy=heavy, waiter=waiter):
                seconds = None
                if not f.cancelled() and f.exception() is None:
                    seconds, result = f.result()
                self.scheduler.done(key, heavy, seconds)
                if not waiter.done():
                    if f.cancelled():
                        waiter.cancel()
                    elif f.exception() is not None:
                        waiter.set_exception(f.exception())
                    else:
                        waiter.set_result(result)
                self._start_ready(loop)
            fut.add_done_callback(finished)

    def stats(self) -> dict:
        return {"decoded": self.decoded.stats(), "volumes": self.volumes.stats(),
                "encoded": self.encoded.stats()}


class LoopLag:
    """How far behind this process's event loop runs: a tick every `interval_s` notes how
    late it came (kept as a maximum that decays by half every few ticks). A loop that is
    late by 100 ms has more requests than it can serve in time, whatever the render queue
    says (issue 17: under 500 phones the requests themselves, not the renders, were the
    queue)."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.lag_s = 0.0
        self.started = False

    def start(self, loop) -> None:
        if not self.started:
            self.started = True
            loop.call_later(self.interval_s, self._tick, loop, loop.time() + self.interval_s)

    def _tick(self, loop, due: float) -> None:
        now = loop.time()
        self.lag_s = max(now - due, self.lag_s * 0.8)
        loop.call_later(self.interval_s, self._tick, loop, now + self.interval_s)


def _timed(call):
    t0 = time.perf_counter()
    out = call()
    return time.perf_counter() - t0, out


class OriginalIntegrityError(RenderError):
    """An original file no longer matches the SHA-256 recorded when it was stored."""

    status = 503

    def __init__(self):
        super().__init__("原始影像文件校验失败，已通知管理员 / the original file failed its "
                         "integrity check (SHA-256); the administrators have been notified")


class DecodeRefused(RenderError):
    """A decode worker ran out of its memory limit or died on this file."""

    status = 422

    def __init__(self):
        super().__init__("图像无法解码（超出解码内存上限或文件损坏）/ the image cannot be decoded "
                         "within the decode worker's memory limit (or the file is damaged)")


class FairScheduler:
    """Which render runs next (issues 14 and 17), across every session of this process.

    Four lanes, served in this order: the frame a person is waiting for (priority 0: the
    first frame of a session, the frame on screen), frames near it (priority 1, also what a
    request without a hint gets), heavy renders (MIP, MPR, volumes), then background work
    (priority 2: previews and prefetches). Within a lane principals take turns round-robin,
    so one phone's 200 prefetches never delay another phone's first frame. A principal runs
    at most `heavy_per_principal` heavy renders at once (the rest wait in its own queue), and
    heavy renders together never take the last of the `slots`, so a 256-px frame never waits
    behind another principal's 2048-px MIPs. Pure bookkeeping: push/pop/done under a lock;
    RenderService.run_fair starts what pop returns."""

    NOW, NEAR, BACKGROUND = 0, 1, 2
    _HEAVY_LANE = 2
    _LANES = (0, 1, 2, 3)            # now, near, heavy, background

    def __init__(self, slots: int, heavy_per_principal: int = 1):
        import collections
        self.slots = max(1, slots)
        self.heavy_per_principal = max(1, heavy_per_principal)
        self.heavy_slots = max(1, self.slots - 1)
        self._queues: "collections.OrderedDict[str, tuple]" = collections.OrderedDict()
        self._heavy_running: "collections.Counter[str]" = collections.Counter()
        self.running = 0
        self.light_s = 0.02                 # smoothed time of a light render (backlog_s)
        self._lock = threading.Lock()

    @classmethod
    def lane_of(cls, heavy: bool, priority: int) -> int:
        if heavy:
            return cls._HEAVY_LANE
        return {cls.NOW: 0, cls.BACKGROUND: 3}.get(priority, 1)

    def push(self, key: str, job, heavy: bool = False, priority: int = NEAR) -> None:
        import collections
        with self._lock:
            q = self._queues.get(key)
            if q is None:
                q = self._queues[key] = tuple(collections.deque() for _ in self._LANES)
            q[self.lane_of(heavy, priority)].append(job)

    def pop(self):
        """(key, job, heavy) to start now, or None (no free slot or nothing eligible)."""
        with self._lock:
            if self.running >= self.slots:
                return None
            heavy_total = sum(self._heavy_running.values())
            for lane in self._LANES:
                heavy = lane == self._HEAVY_LANE
                for key, q in self._queues.items():
                    if not q[lane]:
                        continue
                    if heavy and (self._heavy_running[key] >= self.heavy_per_principal
                                  or heavy_total >= self.heavy_slots):
                        continue
                    job = q[lane].popleft()
                    self._queues.move_to_end(key)       # round-robin: served, goes last
                    if not any(q):
                        del self._queues[key]
                    self.running += 1
                    if heavy:
                        self._heavy_running[key] += 1
                    return key, job, heavy
            return None

    def done(self, key: str, heavy: bool, seconds: float | None = None) -> None:
        with self._lock:
            self.running -= 1
            if heavy:
                self._heavy_running[key] -= 1
                if self._heavy_running[key] <= 0:
                    del self._heavy_running[key]
            elif seconds is not None:
                self.light_s = 0.9 * self.light_s + 0.1 * seconds

    def waiting(self) -> int:
        with self._lock:
            return sum(len(d) for q in self._queues.values() for d in q)

    def backlog_s(self) -> float:
        """About how long a render pushed now at the back would wait (light renders; heavy
        ones counted as ten)."""
        with self._lock:
            n = sum(len(d) * (10 if lane == self._HEAVY_LANE else 1)
                    for q in self._queues.values() for lane, d in enumerate(q))
            return n * self.light_s / self.slots


def etag_for(ref_sha: str, *parts) -> str:
    h = hashlib.sha1(ref_sha.encode(), usedforsecurity=False)    # an ETag, not a secret
    for p in parts:
        h.update(b"|")
        h.update(repr(p).encode())
    return '"' + h.hexdigest()[:32] + '"'


def _jsonable(v):
    import numpy as np
    if isinstance(v, np.ndarray):
        return [round(float(x), 4) for x in v.tolist()]
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return round(float(v), 4)
    if isinstance(v, np.integer):
        return int(v)
    return v


def geometry_json(geo) -> dict:
    import dataclasses
    return {f.name: _jsonable(getattr(geo, f.name)) for f in dataclasses.fields(geo)}


class RenderService(FrameRenderer):
    """Adds series volumes (MPR, 3D MIP), tiles and image facts."""

    def warm_up(self) -> None:
        super().warm_up()
        from render.volume import warm_up_mpr
        from render.vr import warm_up_kernels
        warm_up_kernels()   # the 3D kernels: the first 3D view would load them otherwise
        warm_up_mpr()       # and the first MPR planes the render kernels' plane variants

    VOLUME_LOAD_THREADS = 2

    def _slice_loader(self, coarse: bool = False):
        """Threads that decode a volume's slices side by side (hashing and reading the files
        release the GIL; pydicom's parsing does not): not the render pool, whose thread
        builds the volume and waits for them. Coarse volumes have their own, so their few
        slices never queue behind a full volume's (the decoded-image cache shares a slice
        both ask for)."""
        name = "_slice_pool_coarse" if coarse else "_slice_pool"
        with self._pool_lock:
            pool = self.__dict__.get(name)
            if pool is None:
                from concurrent.futures import ThreadPoolExecutor
                pool = ThreadPoolExecutor(self.VOLUME_LOAD_THREADS,
                                          thread_name_prefix="coarse" if coarse else "slices")
                self.__dict__[name] = pool
            return pool

    def _volume_key(self, refs):
        files = hashlib.sha1("|".join(r.relpath for r in refs).encode(),
                             usedforsecurity=False).hexdigest()
        return ("volume", refs[0].study_uid, refs[0].series_uid, len(refs), files)

    def close(self) -> None:
        super().close()
        for name in ("_slice_pool", "_slice_pool_coarse"):
            pool = self.__dict__.get(name)
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    COARSE_MIN_SLICES = 16      # fewer slices: the full volume is quick enough

    def _load_slices(self, refs: list[InstanceRef]) -> list:
        """Every slice decoded, in the order of refs; the coarse volume's slices first (a
        coarse and a full build under way together share their decodes)."""
        from render.volume import coarse_subset
        first = coarse_subset(len(refs)) if len(refs) >= self.COARSE_MIN_SLICES else []
        rest = sorted(set(range(len(refs))) - set(first))
        order = first + rest
        images = list(self._slice_loader().map(self.image, [refs[i] for i in order]))
        out = [None] * len(refs)
        for i, img in zip(order, images):
            out[i] = img
        return out

    def volume(self, refs: list[InstanceRef]):
        """The series as a volume, built once from its decoded slices (cached)."""
        from render.volume import build_volume
        key = self._volume_key(refs)

        def build():
            vol = build_volume(self._load_slices(refs))
            self.volumes.pop(("coarse", *key))      # its preview is not needed any more
            return vol
        return self.volumes.get_or_load(key, build)

    def volume_ready(self, refs: list[InstanceRef]) -> bool:
        """Whether the full volume is built (in this process's cache)."""
        return self._volume_key(refs) in self.volumes

    def coarse_volume(self, refs: list[InstanceRef]):
        """A quick preview volume (render/volume.py coarse_volume: every second or third...
        slice, 2x2 averaged in-plane), cached; the full volume when it is built already, or
        when the series is short or its chosen slices, in series order, do not make a
        volume (then the full volume's checks and errors apply)."""
        from render.errors import VolumeError
        from render.volume import coarse_subset, coarse_volume
        key = self._volume_key(refs)
        if len(refs) < self.COARSE_MIN_SLICES or key in self.volumes:
            return self.volume(refs)
        sub = [refs[i] for i in coarse_subset(len(refs))]
        ckey = ("coarse", *key)

        def build():
            with self._pool_lock:
                self._coarse_building().add(ckey)
            try:
                return coarse_volume(list(self._slice_loader(coarse=True).map(self.image, sub)))
            finally:
                with self._pool_lock:
                    self._coarse_building().discard(ckey)
        try:
            return self.volumes.get_or_load(ckey, build)
        except VolumeError:
            return self.volume(refs)

    COARSE_BUILDS = 1           # coarse volumes built at once in a process (other series)

    def _coarse_building(self) -> set:
        return self.__dict__.setdefault("_coarse_keys", set())

    def coarse_allowed(self, refs: list[InstanceRef]) -> bool:
        """Whether a coarse=1 request may run as a light render (not behind its viewer's
        full-quality ones): its coarse volume is built or being built, or fewer than
        COARSE_BUILDS others are being built here. Otherwise it waits like a full-quality
        request, so coarse requests for many series cannot fill the render slots."""
        ckey = ("coarse", *self._volume_key(refs))
        if ckey in self.volumes:
            return True
        with self._pool_lock:
            building = self._coarse_building()
            return ckey in building or len(building) < self.COARSE_BUILDS

    def mpr_coarse(self, refs, plane, **params) -> tuple[bytes, str]:
        """An MPR plane from the coarse volume while the full one is not built (else from
        the full one): (encoded image, "coarse" or "full")."""
        vol = self.coarse_volume(refs)
        return self.mpr(refs, plane, volume=vol, **params), \
            "coarse" if vol.coarse else "full"

    def mpr(self, refs, plane, *, position=None, index=None, window=None, viewport=None,
            slab_mm=0.0, slab_mode="mip", yaw=0.0, pitch=0.0, quality=85, fmt="jpeg",
            invert=False, volume=None) -> bytes:
        from render.encode import encode_jpeg, encode_png
        from render.volume import mpr_plane
        vol = self.volume(refs) if volume is None else volume
        t0 = time.perf_counter()
        arr = mpr_plane(vol, plane, position, index=index, window=window, viewport=viewport,
                        slab_mm=slab_mm, slab_mode=slab_mode, yaw=yaw, pitch=pitch,
                        invert=invert)
        out = encode_png(arr) if fmt == "png" else encode_jpeg(arr, quality)
        metrics.RENDER.labels("mpr").observe(time.perf_counter() - t0)
        return out

    def mpr_geometry(self, refs, plane, *, position=None, index=None, yaw=0.0, pitch=0.0,
                     viewport=None) -> dict:
        from render.volume import plane_geometry
        vol = self.volume(refs)
        g = plane_geometry(vol, plane, position, index=index, yaw=yaw, pitch=pitch,
                           viewport=viewport)
        out = geometry_json(g)
        out["volume"] = self.volume_info_of(vol)
        return out

    def volume_info_of(self, vol) -> dict:
        return {"shape": list(vol.shape), "spacing": _jsonable(vol.spacing),
                "origin": _jsonable(vol.origin), "row_dir": _jsonable(vol.row_dir),
                "col_dir": _jsonable(vol.col_dir), "normal": _jsonable(vol.normal),
                "default_window": [vol.default_window.center, vol.default_window.width],
                "irregular": bool(vol.irregular),
                "quality": "coarse" if vol.coarse else "full"}

    def mip(self, refs, *, yaw=0.0, pitch=0.0, size=256, window=None, mode="mip",
            preset=None, quality=85, fmt="jpeg", invert=False) -> bytes:
        """A 3D projection: MIP/MinIP/average (grey) or, mode "vr", volume rendering with a
        preset (RGB; the window moves the preset's opacity ramp)."""
        from render.encode import encode_jpeg, encode_png
        from render.volume import mip_projection
        from render.vr import vr_projection
        vol = self.volume(refs)
        t0 = time.perf_counter()
        if mode == "vr":
            arr = vr_projection(vol, yaw, pitch, size, preset=preset or "bone", window=window,
                                invert=invert)
        else:
            arr = mip_projection(vol, yaw, pitch, size, window=window, mode=mode,
                                 invert=invert)
        out = encode_png(arr) if fmt == "png" else encode_jpeg(arr, quality)
        metrics.RENDER.labels("vr" if mode == "vr" else "mip").observe(time.perf_counter() - t0)
        return out

    def tile(self, ref, frame, level, tx, ty, *, tile_size=256, window=None, quality=85,
             fmt="jpeg", invert=False) -> bytes:
        from render.encode import encode_jpeg, encode_png
        from render.tiles import tile
        img = self.image(ref)
        t0 = time.perf_counter()
        arr = tile(img, frame, level, tx, ty, tile_size, window=window, invert=invert)
        out = encode_png(arr) if fmt == "png" else encode_jpeg(arr, quality)
        metrics.RENDER.labels("tile").observe(time.perf_counter() - t0)
        return out

    def pyramid(self, ref, tile_size=256) -> dict:
        from render.tiles import pyramid_info
        return pyramid_info(self.image(ref), tile_size)

    def frame_values(self, ref, frame: int) -> tuple[bytes, dict]:
        """The stored values of one grey frame for the viewer's pixel read-out and region
        statistics: little-endian int16 when every value fits, else float32; with the
        rescale (slope, intercept) that gives modality values (HU for CT). A modality LUT is
        applied here (values then float32, rescale 1, 0). A colour image: 400."""
        import numpy as np

        from render.pipeline import apply_modality_lut
        img = self.image(ref)
        if img.is_color:
            raise RenderError("彩色图像没有单一像素值 / a colour image has no single value per "
                              "pixel", status=400)
        slope, intercept = img.rescale(frame)
        px = img.pixels[frame]
        if img.modality_lut is not None:
            px = apply_modality_lut(px, slope, intercept, img.modality_lut)
            slope, intercept = 1.0, 0.0
        lo, hi = (int(px.min()), int(px.max())) if px.dtype.kind in "iu" else (0, 1 << 16)
        kind = "int16" if -32768 <= lo and hi <= 32767 else "float32"
        body = np.ascontiguousarray(px, dtype="<i2" if kind == "int16" else "<f4").tobytes()
        return body, {"type": kind, "rows": img.rows, "columns": img.cols, "slope": slope,
                      "intercept": intercept, "modality": img.modality or ""}

    def image_info(self, ref) -> dict:
        img = self.image(ref)
        w = img.window(0) or img.default_window
        return {"frames": img.frames, "rows": img.rows, "columns": img.cols,
                "is_color": bool(img.is_color), "photometric": img.photometric,
                "pixel_spacing": _jsonable(img.pixel_spacing) if img.pixel_spacing else None,
                "window": [w.center, w.width, w.function] if w else None,
                "fps": img.fps, "modality": img.modality}

