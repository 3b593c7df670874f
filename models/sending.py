"""Send to workstation: a doctor's request to send an exam (or one series) to a configured
DICOM peer (dicom_peers) becomes one outbox row of channel 'dicom_send'; the outbox worker
delivers it by outbound C-STORE with its retry, backoff and dead-letter state.

The row's payload carries the job and its progress (total / sent / failed, the instances
still to send): each attempt sends only what the previous ones did not, and the job is
delivered when every instance is. The idempotency key names the requesting user
(`dicomsend:{user id}:{random}`), so `send_jobs` lists one user's jobs. No patient data in
the payload beyond UIDs.
"""
from __future__ import annotations

import json
import secrets

from .catalog import CatalogError
from .db import write_transaction
from .integration import enqueue
from .qr import retrieve_instances
from .schema import Outbox

CHANNEL = "dicom_send"
# UIDs of instances still to send kept in a payload (MariaDB TEXT holds 64 KiB, a UID up
# to 64 bytes); beyond this, the next attempt sends the whole job again
MAX_REMAINING = 500


class SendError(CatalogError):
    status = 400


def _key_prefix(user_id: int) -> str:
    return f"{CHANNEL}:{int(user_id)}:"


def instances_to_send(study_uid: str, series_uid: str | None = None) -> list[dict]:
    """The stored instances of a study (or of one of its series), in series/instance order:
    dicts with sop_uid, sop_class_uid, transfer_syntax and file_path."""
    if series_uid:
        return retrieve_instances("SERIES", {"StudyInstanceUID": study_uid,
                                             "SeriesInstanceUID": series_uid})
    return retrieve_instances("STUDY", {"StudyInstanceUID": study_uid})


def queue_send(*, user_id: int, exam_id: int, study_uid: str, destination: str,
               series_uid: str | None = None) -> dict:
    """Queue one send job; returns it as `job_view` shows it. Raises SendError when there is
    nothing to send (unknown series of this exam, no images stored)."""
    total = len(instances_to_send(study_uid, series_uid))
    if total == 0:
        raise SendError("该检查（或序列）没有可发送的影像 / no stored images to send "
                        "for this exam or series")
    key = _key_prefix(user_id) + secrets.token_hex(8)
    payload = {"kind": "dicom_send", "exam_id": exam_id, "study_uid": study_uid,
               "series_uid": series_uid or "", "total": total, "sent": 0, "failed": 0,
               "remaining": None, "failures": {}}
    with write_transaction():
        enqueue(CHANNEL, destination, key, payload)
    return job_view(Outbox.get(Outbox.idempotency_key == key))


def job_view(row: Outbox) -> dict:
    p = json.loads(row.payload)
    status = {"sent": "done", "dead": "failed"}.get(row.status, "pending")
    if row.status == "pending" and row.attempts:
        status = "retrying"
    live = p.get("sending") or {}             # the attempt under way
    if status == "pending" and live:
        status = "sending"
    return {"id": row.id, "destination": row.destination, "study_uid": p.get("study_uid"),
            "series_uid": p.get("series_uid") or None, "total": p.get("total", 0),
            "sent": min(p.get("total", 0), p.get("sent", 0) + live.get("sent", 0)),
            "failed": live.get("failed", p.get("failed", 0)), "status": status,
            "attempts": row.attempts, "error": row.last_error if row.status != "sent" else "",
            "created_at": row.created_at.isoformat() + "Z",
            "next_attempt_at": (row.next_attempt_at.isoformat() + "Z"
                                if row.status == "pending" else None)}


def send_jobs(user_id: int, limit: int = 20) -> list[dict]:
    """One user's send jobs, newest first."""
    q = (Outbox.select().where((Outbox.channel == CHANNEL)
                               & Outbox.idempotency_key.startswith(_key_prefix(user_id)))
         .order_by(Outbox.id.desc()).limit(limit))
    return [job_view(r) for r in q]


def send_job_payload(key: str) -> dict:
    row = Outbox.get_or_none(Outbox.idempotency_key == key)
    if row is None:
        raise SendError("no such send job", status=404)
    return json.loads(row.payload)


def send_job_progress(key: str, payload: dict, *, sent_now: list[str],
                      failures: dict[str, str], remaining: list[str] | None) -> dict:
    """Record an attempt's progress in the job's payload (sent count, failed instances with
    their reason, the instances still to send). Returns the new payload."""
    p = dict(payload)
    p.pop("sending", None)
    p["sent"] = int(p.get("sent", 0)) + len(sent_now)
    p["failed"] = len(failures)
    p["failures"] = dict(list(failures.items())[:50])
    if remaining is not None and len(remaining) > MAX_REMAINING:
        remaining = None      # too many to keep: the next attempt sends all not yet sent
        p["sent"] = 0
    p["remaining"] = remaining
    text = json.dumps(p)
    with write_transaction():
        Outbox.update(payload=text).where(Outbox.idempotency_key == key).execute()
    return p


def send_job_live(key: str, payload: dict, *, sent: int, failed: int) -> None:
    """Progress of the attempt under way (shown, not used to resume: after a crash the next
    attempt starts from the last recorded `remaining`)."""
    p = dict(payload, sending={"sent": sent, "failed": failed})
    with write_transaction():
        Outbox.update(payload=json.dumps(p)).where(Outbox.idempotency_key == key).execute()
