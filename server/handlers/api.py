"""Health and study catalogue API."""
from __future__ import annotations

import logging

from models import db as dbmod
from models.catalog import mask_name, mask_patient_id
from models.storage import valid_uid

from .. import policy
from .base import ApiError, BaseHandler


def mask_patient(p: dict) -> dict:
    return dict(p, name=mask_name(p.get("name")), patient_id=mask_patient_id(p.get("patient_id")))

log = logging.getLogger(__name__)


class HealthProbe:
    """Database and storage checks on a thread of their own (never queued behind image
    lookups), shared by requests arriving within the same second."""

    TTL_S = 1.0

    def __init__(self, ctx):
        from concurrent.futures import ThreadPoolExecutor
        self.ctx = ctx
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="health")
        self.at = 0.0
        self.result = None
        self.pending = None

    def check(self) -> dict:
        out = {"version": self.ctx.version}
        try:
            with dbmod.connection():
                dbmod.ping()
            out["database"] = "ok"
        except Exception as exc:  # noqa: BLE001
            log.warning("health: database unreachable: %s", type(exc).__name__)
            out["database"] = "unreachable"
        out["storage"] = "ok" if self.ctx.storage.writable() else "not writable"
        out.update(self.disk())
        return out

    def disk(self) -> dict:
        """Free space of the data folder (and of the SQLite database's folder) against
        min_free_disk_mb: below it the node is not ready (a full disk fails every write)."""
        import os
        free = [self.ctx.storage.free_bytes()]
        sqlite = dbmod.sqlite_path()
        if sqlite and sqlite != ":memory:":
            try:
                st = os.statvfs(os.path.dirname(os.path.abspath(sqlite)))
                free.append(st.f_bavail * st.f_frsize)
            except OSError:
                pass
        known = [f for f in free if f is not None]
        minimum = self.ctx.config.min_free_disk_mb
        if not known:
            return {"disk": "unknown"}
        free_mb = min(known) >> 20
        return {"disk": "ok" if free_mb >= minimum else "low free space",
                "free_mb": free_mb, "min_free_mb": minimum}

    async def get(self) -> dict:
        import asyncio
        import time
        now = time.monotonic()
        if self.result is not None and now - self.at < self.TTL_S:
            return self.result
        if self.pending is None:
            self.pending = asyncio.get_running_loop().run_in_executor(self.pool, self.check)
        fut = self.pending
        try:
            result = await asyncio.shield(fut)
        finally:
            if self.pending is fut and fut.done():
                self.pending = None
        self.result, self.at = result, time.monotonic()
        return result


class HealthHandler(BaseHandler):
    """GET /healthz: liveness. The process answers; nothing else is checked, so a load
    balancer or supervisor never restarts a node because the database is away (that is
    /readyz)."""

    async def get(self) -> None:
        self.write_json({"ok": True, "alive": True, "version": self.ctx.version},
                        personal=False)


class ReadyHandler(BaseHandler):
    """GET /readyz: readiness: the database answers, the data folder takes a file, and the
    disks keep min_free_disk_mb free; 503 otherwise, saying which check failed."""

    async def get(self) -> None:
        probe = getattr(self.ctx, "health_probe", None)
        if probe is None:
            probe = self.ctx.health_probe = HealthProbe(self.ctx)
        out = dict(await probe.get())
        failed = [k for k in ("database", "storage", "disk") if out.get(k) not in ("ok", "unknown")]
        out["ok"] = not failed
        out["failed"] = failed
        if failed:
            self.set_header("Retry-After", "5")
        self.write_json(out, status=503 if failed else 200, personal=False)


class StudiesHandler(BaseHandler):
    async def get(self) -> None:
        self.require("exam.search")
        args = dict(
            patient_id=self.str_arg("patient_id", 64),
            accession=self.str_arg("accession", 64),
            name=self.str_arg("name", 64),
            date_from=self.str_arg("date_from", 10),
            date_to=self.str_arg("date_to", 10),
            category=self.str_arg("category", 16),
            page=self.int_arg("page", 1, 1, 100000),
            per_page=self.int_arg("per_page", 50, 1, 500),
            scope=policy.exam_scope(self.principal),     # the one list policy, as QIDO
        )
        result = await self.in_db(self.ctx.catalog.find_studies, **args)
        result["ok"] = True
        self.write_json(result)


def study_payload(ctx, exam, principal) -> dict:
    """The study JSON of the film view as `principal` may see it (blocking: db pool)."""
    study = ctx.catalog.study_json(exam)
    for se in study["series"]:
        if se["instances"]:
            mid = se["instances"][len(se["instances"]) // 2]
            ref = ctx.renders.lookup_instance(exam.study_uid, se["series_uid"], mid["sop_uid"])
            se["display"] = ctx.renders.display_defaults(ref)
    if principal.masks_personal_data():
        study["patient"] = mask_patient(study["patient"])
        if not study["images_enabled"]:
            study["series"] = []
    study["exam_id"] = exam.id
    study["ok"] = True
    return study


class StudyHandler(BaseHandler):
    """GET /api/studies/{study_uid}, and GET /api/exams/{id} for an exam whose images have
    not arrived (no Study Instance UID yet: the report still shows)."""

    async def get(self, ref: str) -> None:
        by_id = self.request.path.startswith("/api/exams/")
        if not by_id and not valid_uid(ref):
            raise ApiError(400, "the study UID is not a valid DICOM UID")
        self.require_principal()     # anonymous: one 401 whether the exam exists or not

        def load():
            catalog = self.ctx.catalog
            exam = catalog.exam_by_id(int(ref)) if by_id else catalog.exam_by_uid(ref)
            p = self.check_exam(exam_id=exam.id, patient_db_id=exam.patient_id,
                                images_enabled=exam.images_enabled, need="report")
            return study_payload(self.ctx, exam, p), exam
        result, exam = await self.in_db(load)
        self.ctx.views.seen(self, "exam.view", "exam", exam.accession_number or exam.id)
        self.write_json(result)
