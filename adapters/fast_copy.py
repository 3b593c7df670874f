"""Fast-to-decode copies of compressed originals.

A JPEG 2000 slice costs about 27 ms to decode and every decoder holds the GIL, so a
series scrolled for the first time would be limited to ~40 frames/s per core. At ingest we
therefore decode each compressed instance once, in worker processes, and keep a copy in
Explicit VR Little Endian next to the original (data_dir/derived/…). The original stays
byte-exact and is what downloads return; the copy is derived data that can be deleted and
made again at any time.
"""
from __future__ import annotations

import collections
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import PurePosixPath

from models.storage import StorageBackend

log = logging.getLogger(__name__)

SPOOL_BYTES = 64 << 20       # a decoded copy is built in memory up to this size, then on disk

NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
JPEG_LS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
# Uncompressed-but-awkward syntaxes (big endian, deflate) decode fast enough as they are.
NO_COPY = NATIVE_SYNTAXES | {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


def needs_fast_copy(transfer_syntax: str) -> bool:
    return bool(transfer_syntax) and transfer_syntax not in NO_COPY


def make_fast_copy(storage: StorageBackend, src_rel: str, dst_rel: str) -> bool:
    """Decode the original at src_rel and store it uncompressed at dst_rel (put_atomic; an
    existing copy is kept). False if it cannot be done (the viewer then decodes the original
    on demand)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    if storage.exists(dst_rel):
        return True
    try:
        with storage.open(src_rel) as fh:
            ds = pydicom.dcmread(fh)
        ts = str(ds.file_meta.TransferSyntaxUID)
        kwargs = {"decoding_plugin": "pyjpegls"} if ts in JPEG_LS else {}
        ds.decompress(as_rgb=True, **kwargs)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    except Exception as exc:  # noqa: BLE001 - a file we cannot decode keeps its original only
        log.info("no fast copy for %s: %s", PurePosixPath(src_rel).name, type(exc).__name__)
        return False
    with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as buf:
        ds.save_as(buf, enforce_file_format=True)
        buf.seek(0)
        storage.put_atomic(dst_rel, buf, durable=False)     # derived data: no fsync needed
    return True


def decode_keeping_copy(storage, src_rel: str, dst_rel: str):
    """Worker-process job: make the fast copy, then decode it (or the original when no copy
    can be made). Returns a render.decode.DecodedImage."""
    from render.decode import load_image
    ok = make_fast_copy(storage, src_rel, dst_rel)
    with storage.path_or_file(dst_rel if ok else src_rel) as src:
        return load_image(src)


def _job(job):
    return make_fast_copy(*job)


def make_fast_copies(storage, pairs: list[tuple[str, str]], workers: int | None = None) -> int:
    """Make copies for (src_rel, dst_rel) pairs using worker processes. Returns how many
    exist."""
    if not pairs:
        return 0
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(pairs) < 4:
        return sum(make_fast_copy(storage, s, d) for s, d in pairs)
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    jobs = [(storage, s, d) for s, d in pairs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return sum(pool.map(_job, jobs, chunksize=8))


def _low_priority() -> None:
    """Worker-process initializer: copies yield the CPU to ingest and to viewers."""
    try:
        os.nice(10)
    except OSError:
        pass


class BackgroundCopies:
    """Fast copies for instances received over the network, made after the ingest, never in
    its way (issue 15, item 9): the C-STORE answer is sent after the commit and nothing
    else; copies wait until no instance has arrived for `quiet_s`, then run one at a time
    in a low-priority worker process (the decoders hold the GIL, so a thread here would
    slow the listener). At most `max_pending` wait; beyond that a copy is skipped — the
    viewer makes it on first view (decode_keeping_copy)."""

    def __init__(self, storage: StorageBackend, *, quiet_s: float = 2.0,
                 max_pending: int = 20000):
        self.storage = storage
        self.quiet_s = quiet_s
        self.max_pending = max_pending
        self._pending: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._last = 0.0
        self._thread: threading.Thread | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False
        self.made = self.failed = self.skipped = 0

    def activity(self) -> None:
        """An instance arrived: copies wait for the next quiet moment."""
        self._last = time.monotonic()

    def add(self, src_rel: str, dst_rel: str) -> None:
        self.activity()
        with self._lock:
            if self._closed:
                return
            if len(self._pending) >= self.max_pending:
                self.skipped += 1
                return
            self._pending.append((src_rel, dst_rel))
            self._idle.clear()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fastcopy",
                                                daemon=True)
                self._thread.start()

    def wait_idle(self, timeout: float) -> bool:
        """True when every queued copy has been made (tests, shutdown)."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._pending.clear()
            pool = self._pool
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        """Until the queue is empty; then the worker process and this thread end (add()
        starts them again), so an idle listener or a finished retrieve holds nothing."""
        while True:
            quiet = time.monotonic() - self._last
            if quiet < self.quiet_s:
                time.sleep(self.quiet_s - quiet)
                continue
            with self._lock:
                job = self._pending.popleft() if self._pending and not self._closed else None
                if job is None:
                    pool, self._pool, self._thread = self._pool, None, None
                    self._idle.set()
            if job is None:
                if pool is not None:
                    pool.shutdown(wait=True)
                return
            try:
                ok = self._worker().submit(make_fast_copy, self.storage, *job).result()
            except Exception as exc:  # noqa: BLE001 - the viewer makes it on first view
                log.info("background fast copy failed: %s", type(exc).__name__)
                ok = False
            if ok:
                self.made += 1
            else:
                self.failed += 1

    def _worker(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing
            self._pool = ProcessPoolExecutor(max_workers=1, initializer=_low_priority,
                                             mp_context=multiprocessing.get_context("spawn"))
        return self._pool
