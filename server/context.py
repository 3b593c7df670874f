"""Start-up: settings → secret key → database → migrations → storage → catalog.

`open_context(config)` is the one place that wires the pieces together; the HTTP app, the
CLI commands and the tests all go through it.
"""
from __future__ import annotations

import logging
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from models import db as dbmod
from models.catalog import Catalog
from models.migrations import migrate
from models.storage import Storage

from .config import ROOT, Config

log = logging.getLogger(__name__)

VERSION = "0.1.0"


def load_secret_key(path: Path) -> bytes:
    """Read the server's 32-byte secret key, creating it (mode 0600) on first start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        key = secrets.token_bytes(32)
        # a temporary file of this starter's own: nodes started together on one shared
        # folder each write theirs, and the first link wins (one fixed name let a starter
        # truncate or lose the file another was linking)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(6)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.hex().encode())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)          # never replace a key another process just made
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise SystemExit(f"{path}: not a hex secret key; restore it from your backup") from None
    if len(key) < 32:
        raise SystemExit(f"{path}: secret key too short (need 32 bytes)")
    return key


@dataclass
class AppContext:
    config: Config
    storage: Storage
    catalog: Catalog
    secret_key: bytes
    executor: ThreadPoolExecutor = field(default=None)   # render/decode pool
    db_executor: ThreadPoolExecutor = field(default=None)
    renders: object = field(default=None)                 # server.render_service.RenderService
    principals: object = field(default=None)              # server.auth.PrincipalResolver
    auditor: object = field(default=None)                 # models.audit.Auditor
    views: object = field(default=None)                   # server.views.ViewAudit
    version: str = VERSION
    # made on first use, at run time (None until then):
    sms_gateway: object = None              # adapters.sms gateway (handlers/patient.py)
    health_probe: object = None             # handlers/api.py HealthProbe
    metrics_sync: object = None             # server/metrics.py CacheSync (handlers/ops.py)
    import_api: tuple | None = None         # (ImportApi, clients) (server/integration.py)
    # set by the route modules' startup(ctx) (server/app.py startup):
    settings_refresh: object = None         # the settings refresh PeriodicCallback
    # set by server/changes.py start_background (every server process):
    change_watch: object = None             # the change-marker watch (server/changes.py)

    def close(self) -> None:
        if self.renders is not None:
            self.renders.close()
        for ex in (self.executor, self.db_executor):
            if ex is not None:
                ex.shutdown(wait=False, cancel_futures=True)
        dbmod.close_connection()


def open_context(config: Config, *, migrate_db: bool = True, storage=None) -> AppContext:
    """storage: a models.storage.StorageBackend (default: the local folder data_dir)."""
    key = load_secret_key(config.path("secret_key_file"))
    from models import personal_data
    personal_data.configure(key)        # raw inbound messages sealed (before the migrations)
    dbmod.connect(config.database_url, root=ROOT)
    from models.staff import forget_settings_cache
    forget_settings_cache()     # run-time settings read from another database are not ours
    if migrate_db:
        ran = migrate()
        if ran:
            log.info("database migrated: %s", ", ".join(ran))
    storage = storage if storage is not None else Storage(config.path("data_dir"))
    storage.ensure()
    storage.clean_stale_temp_files()
    catalog = Catalog(storage, key)
    executor = ThreadPoolExecutor(config.render_threads, thread_name_prefix="render")
    from models.audit import Auditor

    from .auth import PrincipalResolver
    from .views import ViewAudit
    from .render_service import RenderService
    db_executor = ThreadPoolExecutor(4, thread_name_prefix="db")
    # the audit head's anchor lives next to the server key, outside the database
    auditor = Auditor(key, anchor_file=config.path("secret_key_file").parent
                      / "audit-anchor.log")
    renders = RenderService(config, storage, executor)
    # a resent SOP Instance UID is compared by content (models/versions.py): the comparer,
    # the settings, the audit and the render caches to forget a replaced version
    from adapters.dicom_compare import compare_files
    catalog.compare, catalog.config, catalog.auditor = compare_files, config, auditor
    catalog.version_listeners = [renders.forget_instance]
    return AppContext(
        config=config, storage=storage, catalog=catalog, secret_key=key, executor=executor,
        db_executor=db_executor, renders=renders,
        principals=PrincipalResolver(lambda: config.password_max_age_days), auditor=auditor,
        views=ViewAudit(auditor, db_executor))
