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
import io
import logging
import os
import pickle
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
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


def needs_limited_decode(transfer_syntax: str) -> bool:
    """Untrusted compressed (or deflated) pixel data: decoded only in a worker process with
    an address-space limit (decode_worker_init), never in the server process."""
    return transfer_syntax not in NATIVE_SYNTAXES | {"1.2.840.10008.1.2.2"}


def worker_memory_limit(max_decoded_bytes: int) -> int:
    """Address space a decode worker may add to what it holds after start-up: the decoded
    array, the decoder's own buffers and a native copy being written (about 3x), plus room."""
    return 3 * max_decoded_bytes + (512 << 20)


def decode_worker_init(max_decoded_bytes: int, low_priority: bool = False,
                       max_frame_bytes: int | None = None) -> None:
    """Worker-process initializer: load the decoders, then cap the address space
    (RLIMIT_AS) at what the process holds now plus worker_memory_limit(), so a hostile
    image that gets past the header check dies of MemoryError in this worker, not the
    server. Also sets the decoded-size limits of render.decode in this process."""
    import importlib
    import resource

    for name in ("numpy", "pydicom.pixels", "render.decode"):   # loaded before measuring
        importlib.import_module(name)
    from render.decode import set_max_decoded_mb
    set_max_decoded_mb(max_decoded_bytes >> 20,
                       None if max_frame_bytes is None else max_frame_bytes >> 20)
    if low_priority:
        _low_priority()
    try:
        with open("/proc/self/status") as fh:
            vm = next(int(line.split()[1]) << 10 for line in fh if line.startswith("VmSize:"))
        limit = vm + worker_memory_limit(max_decoded_bytes)
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (OSError, ValueError, StopIteration) as exc:   # not Linux: the header check stays
        log.warning("decode worker without an address-space limit: %s", exc)


def decode_pool(workers: int, max_decoded_bytes: int, *, low_priority: bool = False):
    """A spawn-context process pool whose workers run decode_worker_init (with this
    process's per-frame limit)."""
    import multiprocessing

    from render.decode import limits
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(
        "spawn"), initializer=decode_worker_init,
        initargs=(max_decoded_bytes, low_priority, limits["max_frame_bytes"]))


_shared = {"pool": None}
_shared_lock = threading.Lock()


def run_limited(fn, *args):
    """fn(*args) in the shared limited decode worker (one decode_pool process, started on
    first use): untrusted compressed pixel data decoded outside ingest and render (WADO-RS
    and C-GET/C-MOVE transcoding). A worker that dies is replaced and MemoryError raised;
    a MemoryError in the worker passes on as it is."""
    from render.decode import limits
    with _shared_lock:
        pool = _shared["pool"]
        if pool is None:
            pool = _shared["pool"] = decode_pool(1, limits["max_decoded_bytes"])
    try:
        return pool.submit(fn, *args).result()
    except BrokenProcessPool:
        with _shared_lock:
            if _shared["pool"] is pool:
                _shared["pool"] = None
        pool.shutdown(wait=False, cancel_futures=True)
        raise MemoryError("the decode worker died") from None


def make_fast_copy(storage: StorageBackend, src_rel: str, dst_rel: str,
                   max_bytes: int | None = None) -> bool:
    """Decode the original at src_rel and store it uncompressed at dst_rel (put_atomic; an
    existing copy is kept). False if it cannot be done (the viewer then decodes the original
    on demand). A header declaring more than max_bytes (default max_decoded_mb) decoded
    is never decoded."""
    if storage.exists(dst_rel):
        return True
    return _decode_and_store(storage, src_rel, dst_rel, max_bytes) is not None


def _decode_and_store(storage: StorageBackend, src_rel: str, dst_rel: str,
                      max_bytes: int | None):
    """make_fast_copy's work: the decoded dataset (Explicit VR Little Endian, as stored at
    dst_rel), or None when the original cannot be decoded."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    from render.decode import check_decoded_size

    try:
        with storage.open(src_rel) as fh:
            ds = pydicom.dcmread(fh)
        check_decoded_size(ds, max_bytes)
        ts = str(ds.file_meta.TransferSyntaxUID)
        kwargs = {"decoding_plugin": "pyjpegls"} if ts in JPEG_LS else {}
        ds.decompress(as_rgb=True, generate_instance_uid=False, **kwargs)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    except Exception as exc:  # noqa: BLE001 - a file we cannot decode keeps its original only
        log.info("no fast copy for %s: %s", PurePosixPath(src_rel).name, type(exc).__name__)
        return None
    with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as buf:
        ds.save_as(buf, enforce_file_format=True)
        buf.seek(0)
        storage.put_atomic(dst_rel, buf, durable=False)     # derived data: no fsync needed
    return ds


def decode_keeping_copy(storage, src_rel: str, dst_rel: str, max_bytes: int | None = None):
    """Worker-process job (decode_pool): make the fast copy and return the image decoded
    from it (render.decode.DecodedImage). The original is read and decoded once: the image
    comes from the dataset just written, not from reading the copy back. An existing copy is
    read as it is; when no copy can be made the original is decoded by load_image, which
    raises the error that names the problem."""
    from render.decode import image_from_dataset, load_image
    if not storage.exists(dst_rel):
        ds = _decode_and_store(storage, src_rel, dst_rel, max_bytes)
        if ds is not None:
            return image_from_dataset(ds, max_bytes)
    ok = storage.exists(dst_rel)
    with storage.path_or_file(dst_rel if ok else src_rel) as src:
        return load_image(src, max_bytes)


def _job(job):
    try:
        return make_fast_copy(*job)
    except MemoryError:         # over the worker's address-space limit: no copy
        return False


class _Relay:
    """The storage a worker sees when the real backend cannot be sent to another process
    (one without local files, holding locks or connections): the original's bytes in, the
    copy's bytes out; the parent stores them."""

    def __init__(self, src_rel: str, data: bytes):
        self.src_rel, self.data, self.out = src_rel, data, None

    def exists(self, rel: str) -> bool:
        return False

    def open(self, rel: str):
        return io.BytesIO(self.data)

    def put_atomic(self, rel: str, data, *, durable: bool = True):
        self.out = data.read()


def _relay_job(job):
    src_rel, data, dst_rel, max_bytes = job
    relay = _Relay(src_rel, data)
    try:
        make_fast_copy(relay, src_rel, dst_rel, max_bytes)
    except MemoryError:
        return None
    return relay.out


def _shareable(storage) -> bool:
    try:
        pickle.dumps(storage)
        return True
    except Exception:  # noqa: BLE001 - locks, sockets, connections
        return False


def _relayed_copies(storage, pairs, pool, max_bytes: int) -> int:
    jobs = [(s, storage.read(s), d, max_bytes) for s, d in pairs if not storage.exists(d)]
    for (_, _, d, _), out in zip(jobs, pool.map(_relay_job, jobs)):
        if out:
            storage.put_atomic(d, out, durable=False)
    return sum(storage.exists(d) for _, d in pairs)


def make_fast_copies(storage, pairs: list[tuple[str, str]], workers: int | None = None,
                     max_bytes: int | None = None) -> int:
    """Make copies for (src_rel, dst_rel) pairs in limited worker processes (decode_pool;
    never in this process: the data is untrusted). Returns how many exist."""
    if not pairs:
        return 0
    from render.decode import limits
    max_bytes = max_bytes or limits["max_decoded_bytes"]
    workers = max(1, min(workers or os.cpu_count() or 1, len(pairs)))
    jobs = [(storage, s, d, max_bytes) for s, d in pairs]
    try:
        with decode_pool(workers, max_bytes) as pool:
            if not _shareable(storage):
                return _relayed_copies(storage, pairs, pool, max_bytes)
            return sum(pool.map(_job, jobs, chunksize=8))
    except BrokenProcessPool:       # a worker killed by a decoder: the viewer makes them
        log.warning("fast copies: a decode worker died; the rest are made on first view")
        return sum(storage.exists(d) for _, d in pairs)


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
        self._queue(make_fast_copy, (src_rel, dst_rel))

    def add_job(self, fn, *args) -> None:
        """Other derived data made the same way: fn(storage, *args) -> bool, a module-level
        function (it runs in the worker process), e.g. dicomweb.write_metadata_sidecar."""
        self._queue(fn, args)

    def _queue(self, fn, args: tuple) -> None:
        self.activity()
        with self._lock:
            if self._closed:
                return
            if len(self._pending) >= self.max_pending:
                self.skipped += 1
                return
            self._pending.append((fn, args))
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
                fn, args = job
                ok = self._worker().submit(fn, self.storage, *args).result()
            except Exception as exc:  # noqa: BLE001 - the viewer makes it on first view
                log.info("background fast copy failed: %s", type(exc).__name__)
                ok = False
                if isinstance(exc, BrokenProcessPool):      # a fresh worker for the next one
                    with self._lock:
                        pool, self._pool = self._pool, None
                    if pool is not None:
                        pool.shutdown(wait=False)
            if ok:
                self.made += 1
            else:
                self.failed += 1

    def _worker(self) -> ProcessPoolExecutor:
        if self._pool is None:
            from render.decode import limits
            self._pool = decode_pool(1, limits["max_decoded_bytes"], low_priority=True)
        return self._pool
