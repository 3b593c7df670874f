"""The outbox worker: delivers every queued outbound message at least once.

Rows are written by the service verbs (models/integration.py) in the same transaction as
the change that causes them. The worker claims due rows (outbox_claim: row by row, so any
number of workers on any number of nodes never deliver one message at the same time),
renews its claims while it delivers, hands each row to the sender of its channel, marks it
sent only after the peer acknowledged it, and otherwise schedules the next attempt with
exponential backoff; after `max_attempts` the row is 'dead' and shown to admins, who can
resend it. Rows survive restarts (they are in the database); a worker that dies
mid-delivery leaves claims that run out after `claim_s`, then another worker delivers those
messages. A receiver may see a message twice after a crash, never zero times, and can
de-duplicate by the idempotency key (sent as MSH-10 for HL7).
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from models.db import guarded
from models.errors import DatabaseUnavailable
from models.integration import (CLAIM_S, outbox_claim, outbox_mark_failed, outbox_mark_sent,
                                outbox_release_claims, outbox_renew_claims)
from models.leases import holder_id

from .hl7_codec import escape, hl7_timestamp
from .hl7_mllp import DeliveryError, send_message

log = logging.getLogger(__name__)

Sender = Callable[[str, str, str], Awaitable[None]]   # (destination, payload, key)
SENDERS: dict[str, Sender] = {}


def register_sender(channel: str, sender: Sender) -> None:
    """Other modules (SMS, WeChat) register how their channel is delivered."""
    SENDERS[channel] = sender


@dataclass
class Hl7Receiver:
    """One entry of hl7_receivers: `host:port`, or `host:port/APP^FACILITY` for the
    receiver's MSH-5 / MSH-6 (without it both carry the host, so they are never empty)."""
    host: str
    port: int
    app: str
    facility: str

    @classmethod
    def parse(cls, destination: str) -> "Hl7Receiver":
        addr, _, names = destination.strip().partition("/")
        host, _, port = addr.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise DeliveryError(f"destination {destination!r} is not host:port or "
                                "host:port/APP^FACILITY")
        app, _, facility = names.partition("^")
        return cls(host, int(port), app.strip() or host, facility.strip() or host)


@dataclass
class Hl7Out:
    """What the 'film published' ORU needs from the settings: the sending application
    (MSH-3/4) and the server's public base URL (the viewer link)."""
    app: str = "CLOUDFILM"
    base_url: str = ""


HL7_OUT = Hl7Out()


def film_url(payload: dict, base_url: str) -> str:
    """The exam's film page: /film/{study_uid}, or /film/exam/{id} without a Study UID."""
    if payload.get("url"):
        return payload["url"]
    if not base_url:
        return ""
    if payload.get("study_uid"):
        return f"{base_url.rstrip('/')}/film/{payload['study_uid']}"
    if payload.get("exam_id"):
        return f"{base_url.rstrip('/')}/film/exam/{int(payload['exam_id'])}"
    return ""


def film_published_hl7(payload: dict, key: str, app: str = "CLOUDFILM", *,
                       receiver: Hl7Receiver | None = None, base_url: str = "") -> bytes:
    """ORU^R01 telling the RIS/HIS that an exam's cloud film and report are published.
    MSH-10 is derived from the idempotency key, so a receiver sees the same control ID on a
    repeated delivery. MSH-5/6 are the receiver's (hl7_receivers `host:port/APP^FACILITY`);
    the OBX rows carry the publication status, the Study Instance UID and the viewer URL,
    each only when it has a value (OBX-5 is never empty)."""
    ctrl = "CF" + key.split(":")[1] + "-" + key.split(":")[2][:12] if key.count(":") >= 2 \
        else key[:20]
    status = "C" if payload.get("report_status") == "corrected" else "F"
    to_app = escape(receiver.app) if receiver else ""
    to_fac = escape(receiver.facility) if receiver else ""
    segs = [
        f"MSH|^~\\&|{escape(app)}|{escape(app)}|{to_app}|{to_fac}|{hl7_timestamp()}||"
        f"ORU^R01^ORU_R01|{escape(ctrl)}|P|2.5||||||UNICODE UTF-8",
        f"PID|1||{escape(payload.get('patient_id', ''))}",
        f"OBR|1||{escape(payload.get('accession', ''))}|CLOUDFILM^Cloud film published|||"
        f"||||||||||||{escape(payload.get('accession', ''))}|||||||{status}",
    ]
    rows = [("ST", "PUBLISHED^Cloud film status^L",
             "corrected report published" if status == "C" else "published")]
    if payload.get("study_uid"):
        rows.append(("ST", "STUDYUID^Study Instance UID^L", escape(payload["study_uid"])))
    url = film_url(payload, base_url)
    if url:
        rows.append(("RP", "FILMURL^Cloud film viewer URL^L",
                     f"{escape(url)}^{escape(app)}^TEXT^HTML"))
    for n, (vtype, ident, value) in enumerate(rows, 1):
        segs.append(f"OBX|{n}|{vtype}|{ident}||{value}||||||{status}")
    return ("\r".join(segs) + "\r").encode("utf-8")


async def send_hl7(destination: str, payload: str, key: str) -> None:
    receiver = Hl7Receiver.parse(destination)
    data = json.loads(payload)
    if data.get("kind") == "film_published":
        msg = film_published_hl7(data, key, HL7_OUT.app, receiver=receiver,
                                 base_url=HL7_OUT.base_url)
    elif data.get("kind") == "raw_hl7":
        msg = data["message"].encode("utf-8")
    else:
        raise DeliveryError(f"unknown HL7 payload kind {data.get('kind')!r}")
    await send_message(receiver.host, receiver.port, msg)


register_sender("hl7", send_hl7)


def make_dicom_sender(read: Callable[[str], bytes], peers: Callable[[], dict],
                      calling: Callable[[], str]) -> Sender:
    """The 'dicom_send' channel (send to workstation, models/sending.py): the destination is
    an AE title of dicom_peers; one attempt C-STOREs the instances earlier attempts did not
    deliver and records the progress in the job's payload. Any instance left makes the
    attempt fail, so the outbox retries it with backoff (dead after max_attempts, with
    the reason); the job is delivered when every instance is."""
    from models.db import connection
    from models.sending import (instances_to_send, send_job_live, send_job_payload,
                                send_job_progress)

    from .dicom_net import PacsError, send_instances

    def in_db(fn, *args, **kw):
        with connection():
            return fn(*args, **kw)

    def attempt(destination: str, key: str) -> None:
        payload = in_db(send_job_payload, key)
        addr = peers().get(destination)
        if addr is None:
            raise DeliveryError(f"目的地 {destination} 未配置 / destination {destination} is "
                                "not in dicom_peers")
        instances = in_db(instances_to_send, payload["study_uid"],
                          payload.get("series_uid") or None)
        left = payload.get("remaining")
        if left is not None:
            wanted = set(left)
            instances = [i for i in instances if i["sop_uid"] in wanted]
        def progress(so_far) -> None:
            in_db(send_job_live, key, payload, sent=len(so_far.sent),
                  failed=len(so_far.failures))
        try:
            res = send_instances(addr[0], addr[1], destination, instances, read,
                                 calling=calling(), on_progress=progress)
        except PacsError as exc:
            raise DeliveryError(str(exc)) from None
        remaining = list(res.failures) + res.not_tried
        in_db(send_job_progress, key, payload, sent_now=res.sent, failures=res.failures,
              remaining=remaining)
        if remaining:
            why = next(iter(res.failures.values()), "association ended")
            raise DeliveryError(f"{len(remaining)}/{len(instances)} 未发送 / not sent: {why}")

    async def send(destination: str, payload: str, key: str) -> None:
        await asyncio.get_running_loop().run_in_executor(None, attempt, destination, key)
    return send


@dataclass
class OutboxSettings:
    max_attempts: int = 10
    backoff_s: int = 5
    backoff_max_s: int = 3600
    poll_s: float = 1.0
    concurrency: int = 4
    batch: int = 50                 # messages claimed per pass
    claim_s: float = CLAIM_S        # a claim runs out this long after its last renewal
    app: str = "CLOUDFILM"          # MSH-3/4 of outbound HL7
    base_url: str = ""              # the viewer URL in 'film published'

    @classmethod
    def from_config(cls, c) -> "OutboxSettings":
        return cls(c.outbox_max_attempts, c.outbox_backoff_s, c.outbox_backoff_max_s,
                   app=c.dicom_ae_title or "CLOUDFILM", base_url=c.base_url)


class OutboxWorker:
    def __init__(self, settings: OutboxSettings, executor=None, holder: str | None = None):
        self.s = settings
        HL7_OUT.app, HL7_OUT.base_url = settings.app, settings.base_url   # send_hl7 reads it
        self.executor = executor
        self.holder = holder or holder_id()       # who claims (host:pid:random)
        self.in_flight: set[int] = set()          # ids of the claimed rows being delivered
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._renew_task: asyncio.Task | None = None
        self.delivered = 0
        self.failed = 0

    def start(self) -> "OutboxWorker":
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self.run())
        self._renew_task = loop.create_task(self.renew_claims())
        return self

    async def stop(self) -> None:
        """Stop delivering and give up this worker's claims (the rows go to another worker,
        or to this node's next worker, at once; one cut off mid-send may arrive twice)."""
        for task in (self._task, self._renew_task):
            if task:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._task = self._renew_task = None
        try:
            await self._db(outbox_release_claims, self.holder)
        except Exception as exc:  # noqa: BLE001 - the claims run out by themselves
            log.info("outbox claims not released: %s: %s", type(exc).__name__, exc)
        self.in_flight.clear()

    async def renew_claims(self) -> None:
        """Keep the claims on the rows being delivered (a long DICOM send) from running
        out while this worker lives: renewed every third of claim_s."""
        while True:
            await asyncio.sleep(self.s.claim_s / 3)
            try:
                await self._db(outbox_renew_claims, set(self.in_flight), self.holder,
                               self.s.claim_s)
            except asyncio.CancelledError:
                raise
            except DatabaseUnavailable:
                pass                        # logged once per outage (models.db.outage)
            except Exception as exc:  # noqa: BLE001 - tried again; at worst a claim runs out
                log.warning("outbox claims not renewed: %s: %s", type(exc).__name__, exc)

    def poke(self) -> None:
        """Look at the queue now (after a change queued something)."""
        self._wake.set()

    async def _db(self, fn, *args, **kw):
        loop = asyncio.get_running_loop()
        # guarded: a dead connection is dropped (the next pass opens a new one) and a
        # database outage raises DatabaseUnavailable, logged once by models.db.outage
        return await loop.run_in_executor(self.executor, lambda: guarded(fn, *args, **kw))

    async def run(self) -> None:
        while True:
            try:
                n = await self.run_once()
            except asyncio.CancelledError:
                raise
            except DatabaseUnavailable:
                n = 0                       # logged once per outage (models.db.outage)
            except Exception:  # noqa: BLE001 - the worker never dies
                log.exception("outbox pass failed")
                n = 0
            if n:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.s.poll_s)
            except asyncio.TimeoutError:
                pass

    async def run_once(self) -> int:
        """Claim due rows and deliver them (concurrency at a time). Returns how many."""
        rows = await self._db(outbox_claim, self.holder, self.s.batch, self.s.claim_s)
        self.in_flight.update(r.id for r in rows)
        sem = asyncio.Semaphore(self.s.concurrency)

        async def one(row):
            try:
                async with sem:
                    await self.deliver(row)
            finally:
                self.in_flight.discard(row.id)
        await asyncio.gather(*(one(r) for r in rows))
        return len(rows)

    async def deliver(self, row) -> bool:
        sender = SENDERS.get(row.channel)
        try:
            if sender is None:
                raise DeliveryError(f"no sender for channel {row.channel!r}")
            await sender(row.destination, row.payload, row.idempotency_key)
        except Exception as exc:  # noqa: BLE001 - any failure is retried later
            why = str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
            status = await self._db(outbox_mark_failed, row.id, why,
                                    max_attempts=self.s.max_attempts,
                                    backoff_s=self.s.backoff_s,
                                    backoff_max_s=self.s.backoff_max_s, holder=self.holder)
            self.failed += 1
            log.info("outbox %d (%s to %s) attempt %d failed%s: %s", row.id, row.channel,
                     row.destination, row.attempts + 1,
                     ", now dead" if status == "dead" else "", why[:200])
            return False
        await self._db(outbox_mark_sent, row.id)
        self.delivered += 1
        return True
