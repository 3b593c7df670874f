"""Start the integration services in the server's event loop: the DICOM listener (its
own threads) and the HL7 MLLP listener (asyncio, database work in a thread pool) in the
primary process of each machine (they bind ports); the watched folder and the outbox worker
in the one process of the deployment that holds their lease (models/leases.py: 'watch_folder',
'outbox'). Each runs only when enabled in the settings; the outbox worker is on by default
(it only sends what was configured).

`SERVICES` is the running set, read by the admin status view and the PACS handlers.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from adapters.dicom_net import (DicomScp, InstanceSink, PacsNode, parse_charset_overrides,
                                retrieve_study)
from adapters.hl7_inbound import Hl7Inbound, Hl7Settings
from adapters.hl7_mllp import MllpListener, Refused, event_recorder
from adapters.import_api import ImportApi, load_clients
from adapters.outbox import OutboxSettings, OutboxWorker
from adapters.watch_folder import WatchFolder
from models.db import close_connection
from models.integration import note_event, retrieve_job_start, retrieve_job_update
from models.leases import SingletonJob
from models.peers import Gate, is_loopback

from .tls import ssl_context

log = logging.getLogger(__name__)


@dataclass
class Services:
    scp: DicomScp | None = None
    mllp: MllpListener | None = None
    hl7: Hl7Inbound | None = None
    outbox: OutboxWorker | None = None
    watch: WatchFolder | None = None
    watch_task: asyncio.Task | None = None
    hl7_executor: ThreadPoolExecutor | None = None
    tasks: list = field(default_factory=list)
    jobs: list = field(default_factory=list)          # SingletonJob: outbox, watch_folder

    def describe(self) -> dict:
        out = {}
        if self.scp:
            out["dicom"] = {"ae_title": self.scp.ae_title, "port": self.scp.port,
                            "stored": self.scp.sink.stored, "failed": self.scp.sink.failed,
                            "associations": self.scp.associations,
                            "last_peer": self.scp.last_peer}
        if self.mllp:
            out["hl7"] = {"port": self.mllp.port, "open_connections": self.mllp.connections,
                          "messages": self.mllp.messages}
        if self.outbox:
            out["outbox_worker"] = {"delivered": self.outbox.delivered,
                                    "failed_attempts": self.outbox.failed}
        if self.watch:
            out["watch_folder"] = {"folder": str(self.watch.root),
                                   "processed": self.watch.processed,
                                   "failed": self.watch.rejected}
        return out


SERVICES = Services()


def receivers(config) -> list[str]:
    return [r.strip() for r in config.hl7_receivers.split(",") if r.strip()]


def import_api_for(ctx) -> tuple[ImportApi, dict[str, bytes]] | None:
    """The import API and its clients, or None when import_api_clients_file is empty."""
    if ctx.import_api is not None:
        return ctx.import_api
    path = ctx.config.import_api_clients_file
    if not path:
        return None
    clients = load_clients(ctx.config.path("import_api_clients_file"))
    api = ImportApi(ctx.catalog, receivers=receivers(ctx.config),
                    charset_fallback=ctx.config.charset_fallback,
                    # behind a reverse proxy the callers come from the network even when
                    # the server itself listens on loopback
                    gate=peer_gate(ctx, "import", ctx.config.host,
                                   behind_proxy=bool(ctx.config.trusted_proxies)))
    ctx.import_api = (api, clients)
    return ctx.import_api


def _in_thread(fn):
    """Run fn with a database connection that is closed afterwards (pool threads)."""
    def run(*a, **kw):
        try:
            return fn(*a, **kw)
        finally:
            close_connection()
    return run


def peer_gate(ctx, kind: str, bind: str, legacy_aets: list[str] = (), *,
              behind_proxy: bool = False) -> Gate:
    """What a listener bound to `bind` admits (models/peers.py): peers of the table; unknown
    senders only on loopback (or with peers_allow_unknown); for DICOM also the AE titles of
    the old setting dicom_allowed_aets, from any address. Behind a reverse proxy the callers
    come from the network even when the server itself listens on loopback."""
    return Gate(kind, loopback=is_loopback(bind) and not behind_proxy,
                legacy_aets=list(legacy_aets),
                allow_unknown=ctx.config.peers_allow_unknown)


def listener_tls(c, prefix: str) -> ssl.SSLContext | None:
    """The SSLContext of a listener from {prefix}_tls_cert_file/_key_file/_ca_file, or None
    (plain). A CA file makes a client certificate signed by it mandatory."""
    cert, key = getattr(c, f"{prefix}_tls_cert_file"), getattr(c, f"{prefix}_tls_key_file")
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError(f"settings {prefix}_tls_cert_file and {prefix}_tls_key_file go "
                         "together: set both")
    context = ssl_context(c.path(f"{prefix}_tls_cert_file"), c.path(f"{prefix}_tls_key_file"))
    if getattr(c, f"{prefix}_tls_ca_file"):
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(c.path(f"{prefix}_tls_ca_file")))
    return context


async def start_hl7(ctx, host: str, port: int) -> MllpListener:
    c = ctx.config
    SERVICES.hl7 = Hl7Inbound(ctx.catalog, Hl7Settings.from_config(c),
                              gate=peer_gate(ctx, "hl7", host))
    # one thread per concurrent message; each keeps its own database connection
    SERVICES.hl7_executor = ThreadPoolExecutor(8, thread_name_prefix="hl7")
    loop = asyncio.get_running_loop()

    async def handle(block: bytes, frame_error: str, refusal: str, peer: str) -> bytes:
        res = await loop.run_in_executor(
            SERVICES.hl7_executor, lambda: SERVICES.hl7.handle(
                block, frame_error=frame_error, refusal=refusal, peer=peer))
        if res.queued and SERVICES.outbox:      # only a message that queued something
            SERVICES.outbox.poke()
        return Refused(res.ack) if res.close else res.ack

    listener = MllpListener(handle, host, port, record=event_recorder(SERVICES.hl7_executor),
                            limit=c.hl7_max_message_mb << 20, idle_s=c.hl7_idle_timeout_s,
                            with_peer=True, ssl_context=listener_tls(c, "hl7"))
    listener.max_connections = c.hl7_max_connections
    listener.budget.limit = max(c.hl7_buffer_budget_mb, c.hl7_max_message_mb) << 20
    return await listener.start()


async def start_background(ctx, primary: bool) -> Services:
    c = ctx.config
    if c.outbox_enabled:
        SERVICES.jobs.append(SingletonJob("outbox", lambda: _start_outbox(c),
                                          _stop_outbox).begin())
    if c.watch_dir:
        SERVICES.jobs.append(SingletonJob("watch_folder", lambda: _start_watch(ctx),
                                          _stop_watch).begin())
    if not primary:
        return SERVICES
    loop = asyncio.get_running_loop()
    if c.dicom_scp_enabled:
        allowed = [a for a in c.dicom_allowed_aets.split(",") if a.strip()]
        from adapters.dicom_qr import parse_peers
        peers = parse_peers(c.dicom_peers)
        if allowed:
            allowed += [ae for ae in peers if ae not in allowed]
        SERVICES.scp = DicomScp(ctx.catalog, ae_title=c.dicom_ae_title, host=c.dicom_bind,
                                port=c.dicom_port, allowed_aets=allowed,
                                max_associations=c.dicom_max_associations,
                                charset_fallback=c.charset_fallback,
                                fast_copies=c.predecode_after_import,
                                receivers=receivers(c),
                                charset_overrides=parse_charset_overrides(
                                    c.dicom_charset_overrides), peers=peers,
                                gate=peer_gate(ctx, "dicom", c.dicom_bind,
                                               [a.strip() for a in allowed]),
                                ssl_context=listener_tls(c, "dicom"))
        await loop.run_in_executor(None, SERVICES.scp.start)
    if c.hl7_enabled:
        SERVICES.mllp = await start_hl7(ctx, c.hl7_bind, c.hl7_port)
    if c.import_api_clients_file:
        import_api_for(ctx)      # a broken clients file stops start-up with its reason
    return SERVICES


_outbox_pool: ThreadPoolExecutor | None = None


def _start_outbox(c) -> None:
    """This process took the 'outbox' lease: deliver the queue."""
    global _outbox_pool
    if _outbox_pool is None:
        _outbox_pool = ThreadPoolExecutor(2, thread_name_prefix="outbox")
    SERVICES.outbox = OutboxWorker(OutboxSettings.from_config(c), executor=_outbox_pool).start()


async def _stop_outbox() -> None:
    worker, SERVICES.outbox = SERVICES.outbox, None
    if worker:
        await worker.stop()


def _start_watch(ctx) -> None:
    """This process took the 'watch_folder' lease: scan the folder."""
    c = ctx.config
    SERVICES.watch = WatchFolder(ctx.catalog, c.path("watch_dir"), receivers=receivers(c),
                                 charset_fallback=c.charset_fallback)
    SERVICES.watch_task = asyncio.get_running_loop().create_task(
        _watch_loop(SERVICES.watch, c.watch_interval_s))


async def _stop_watch() -> None:
    task = SERVICES.watch_task
    SERVICES.watch = SERVICES.watch_task = None
    if task is not None:
        task.cancel()


async def _watch_loop(watch: WatchFolder, interval: int) -> None:
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(1, thread_name_prefix="watch")
    try:
        while True:
            try:
                await loop.run_in_executor(pool, _in_thread(watch.scan))
            except Exception:  # noqa: BLE001 - keep watching
                log.exception("watched folder scan failed")
            await asyncio.sleep(interval)
    finally:
        pool.shutdown(wait=False)      # the lease moved on (or the server stops)


async def drain_background(grace_s: float) -> None:
    """SIGTERM (server/cli.py): the listeners take nothing new and finish what they are
    receiving (a C-STORE association, the HL7 message being applied) for at most grace_s;
    then every background service stops as in stop_background."""
    loop = asyncio.get_running_loop()
    waits = []
    if SERVICES.mllp:
        waits.append(SERVICES.mllp.drain(grace_s))
    if SERVICES.scp:
        waits.append(loop.run_in_executor(None, SERVICES.scp.drain, grace_s))
    for cut in await asyncio.gather(*waits):
        if cut:
            log.warning("stopping: %d connections or associations still busy after %s s were "
                        "ended (their senders send again)", cut, grace_s)
    await stop_background()


async def stop_background() -> None:
    for job in SERVICES.jobs:
        await job.close()          # stops its job and releases the lease
    for t in SERVICES.tasks:
        t.cancel()
    SERVICES.tasks.clear()
    if SERVICES.mllp:
        await SERVICES.mllp.stop()
    if SERVICES.outbox:
        await SERVICES.outbox.stop()
    if SERVICES.scp:
        SERVICES.scp.stop()
    SERVICES.__init__()


# the PACS -----------------------------------------------------------------------------------
_retrieve_pool = ThreadPoolExecutor(2, thread_name_prefix="retrieve")


def start_retrieve(ctx, study_uid: str) -> dict:
    """Start fetching a study from the PACS in the background (runs in a db thread).
    Returns the job's state; a retrieve already running is joined, not repeated."""
    node = PacsNode.from_config(ctx.config)
    if node is None:
        raise ValueError("no PACS configured (pacs_ae_title, pacs_host)")
    job, started = retrieve_job_start(study_uid)
    if started:
        method = ctx.config.pacs_retrieve
        sink = InstanceSink(ctx.catalog, charset_fallback=ctx.config.charset_fallback) \
            if method == "get" else None
        _retrieve_pool.submit(_in_thread(_run_retrieve), node, study_uid, method, sink)
    return {"study_uid": study_uid, "started": started}


def _run_retrieve(node, study_uid, method, sink) -> None:
    try:
        last = retrieve_study(node, study_uid, method=method, sink=sink)
        retrieve_job_update(study_uid, status="done",
                            completed=last["completed"] + last["warning"],
                            failed=last["failed"])
    except Exception as exc:  # noqa: BLE001 - the reason goes to the job and the event log
        log.info("retrieve of %s failed: %s", study_uid, exc)
        retrieve_job_update(study_uid, status="failed", error=str(exc)[:1000])
        note_event("pacs", f"{node.ae_title}@{node.host}:{node.port}", "error",
                   f"retrieve of {study_uid} failed: {exc}")
