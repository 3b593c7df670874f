"""Prometheus metrics of a CloudFilm node (GET /metrics, server/handlers/ops.py).

One scrape shows the whole node, however many `processes` share the port: `serve` points
prometheus_client's multiprocess mode at a folder of its own (server/cli.py
prepare_metrics_dir: the server key's folder/metrics/<host>-<port>, emptied at every start)
before anything imports prometheus_client, and each process writes its counters and
histograms there.

What is measured in the process that does the work:
- cloudfilm_http_request_duration_seconds{group, status}: every request (server/app.py
  log_request), by route group (ROUTE_GROUPS: the handler's module) and status class;
- cloudfilm_render_seconds / cloudfilm_decode_seconds{source} (server/render_service.py);
- cloudfilm_db_wait_seconds{stage}: a database call waiting for a thread of the database
  pool (stage=queue) and for its connection (stage=connect: a pooled MariaDB connection or a
  new SQLite one) (server/handlers/base.py in_db);
- cloudfilm_inbound_messages_total{channel, result} (models/integration.py apply_inbound);
- the render caches' hits, misses and sizes, copied from their own counters every
  SYNC_S seconds and at each scrape (CacheSync).

What is read at scrape time by the process answering it (DatabaseCollector: two cheap
queries): the outbox backlog and the age of its oldest pending message, and the leases this
node holds. Labels never carry patient data: route groups, channels, results, cache and
lease names only.
"""
from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)

SYNC_S = 5.0
ENV = "PROMETHEUS_MULTIPROC_DIR"


from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, generate_latest,
                               multiprocess)
from prometheus_client.core import GaugeMetricFamily

MULTIPROCESS = bool(os.environ.get(ENV))
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WORK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

HTTP = Histogram("cloudfilm_http_request_duration_seconds",
                 "HTTP request time from arrival to the last byte written, by route group "
                 "and status class", ("group", "status"), buckets=LATENCY_BUCKETS)
RENDER = Histogram("cloudfilm_render_seconds",
                   "Time to render and encode one image whose pixels are decoded, by kind "
                   "(frame, tile, mpr, mip)",
                   ("kind",), buckets=WORK_BUCKETS)
DECODE = Histogram("cloudfilm_decode_seconds",
                   "Time to decode one image on a decoded-pixel cache miss, by source "
                   "(fast_copy, original, worker: a decode worker process)",
                   ("source",), buckets=WORK_BUCKETS)
DB_WAIT = Histogram("cloudfilm_db_wait_seconds",
                    "Time a database call waits: for a thread of the database pool (queue) "
                    "and for its connection (connect)", ("stage",), buckets=WORK_BUCKETS)
INBOUND = Counter("cloudfilm_inbound_messages_total",
                  "Inbound messages (HL7, import API, folder) by channel and result "
                  "(applied, duplicate, conflict, error, rejected, failed: not recorded)",
                  ("channel", "result"))
RENDERS_SHED = Counter("cloudfilm_renders_shed_total",
                       "Background renders (previews, prefetches) answered 429 + "
                       "Retry-After because the render queue was longer than "
                       "render_shed_background_ms or the event loop ran later than "
                       "render_shed_loop_lag_ms")
CACHE_HITS = Counter("cloudfilm_cache_hits_total", "Render cache hits", ("cache",))
CACHE_MISSES = Counter("cloudfilm_cache_misses_total", "Render cache misses", ("cache",))
CACHE_BYTES = Gauge("cloudfilm_cache_bytes", "Bytes held by a render cache", ("cache",),
                    multiprocess_mode="livesum")
CACHE_ENTRIES = Gauge("cloudfilm_cache_entries", "Entries held by a render cache",
                      ("cache",), multiprocess_mode="livesum")
CACHE_MAX_BYTES = Gauge("cloudfilm_cache_max_bytes", "Byte budget of a render cache",
                        ("cache",), multiprocess_mode="livesum")

# the handler's module (server/handlers/<name>.py) -> route group
ROUTE_GROUPS = {
    "render": "render", "dicomweb": "dicomweb", "wado_uri": "dicomweb", "ohif": "pages",
    "pages": "pages", "visitor": "share", "shares": "share", "patient": "patient",
    "patient_qr": "patient", "download": "download", "report": "api", "api": "api",
    "auth": "api", "staff": "api", "send": "api", "security": "admin", "admin": "admin",
    "integration": "integration", "wechat": "integration", "openapi": "api", "ops": "ops",
}
_GROUP_OF_CLASS: dict[type, str] = {}


def route_group(handler) -> str:
    """The route group of a request: by the module of its handler (ROUTE_GROUPS), the share
    page /s/… (served by the pages module's page handler) counted with the shares."""
    cls = type(handler)
    if handler.request.path.startswith("/s/"):
        return "share"
    group = _GROUP_OF_CLASS.get(cls)
    if group is None:
        from tornado.web import StaticFileHandler
        name = cls.__module__.rsplit(".", 1)[-1]
        if issubclass(cls, StaticFileHandler):
            group = "static"
        elif cls.__name__ == "NotFoundHandler":
            group = "not_found"
        elif cls.__name__ in ("HealthHandler", "ReadyHandler"):
            group = "ops"
        else:
            group = ROUTE_GROUPS.get(name, "other")
        _GROUP_OF_CLASS[cls] = group
    return group


def observe_request(handler, seconds: float) -> None:
    status = handler.get_status()
    HTTP.labels(route_group(handler), f"{status // 100}xx").observe(seconds)


def inbound_observer(channel: str, result: str) -> None:
    INBOUND.labels(channel[:32], result[:16]).inc()


# caches -------------------------------------------------------------------------------------
class CacheSync:
    """Copies the render caches' own counters (render/cache.py ByteLRU.stats) into the
    metrics: counters by their growth since the last copy, sizes as they are."""

    def __init__(self, renders):
        self.renders = renders
        self.seen: dict[tuple[str, str], int] = {}

    def __call__(self) -> None:
        if self.renders is None:
            return
        for name, st in self.renders.stats().items():
            for key, counter in (("hits", CACHE_HITS), ("misses", CACHE_MISSES)):
                before = self.seen.get((name, key), 0)
                now = st.get(key, 0)
                if now > before:
                    counter.labels(name).inc(now - before)
                self.seen[(name, key)] = now
            CACHE_BYTES.labels(name).set(st.get("bytes", 0))
            CACHE_ENTRIES.labels(name).set(st.get("entries", 0))
            CACHE_MAX_BYTES.labels(name).set(st.get("max_bytes", 0))


# read at scrape time ------------------------------------------------------------------------
class DatabaseCollector:
    """Outbox backlog and leases, from the database when a scrape asks (operations_facts:
    two small queries)."""

    def __init__(self, facts: dict | None):
        self.facts = facts

    def collect(self):
        facts = self.facts or {}
        up = GaugeMetricFamily("cloudfilm_database_up",
                               "1 when the database answered this scrape's queries")
        up.add_metric([], 1.0 if self.facts is not None else 0.0)
        yield up
        if self.facts is None:
            return
        backlog = GaugeMetricFamily("cloudfilm_outbox_backlog",
                                    "Outbox messages waiting for delivery, by channel and "
                                    "status (pending, dead)", labels=("channel", "status"))
        for (channel, status), n in sorted(facts["outbox"].items()):
            backlog.add_metric([channel, status], n)
        yield backlog
        age = GaugeMetricFamily("cloudfilm_outbox_oldest_pending_age_seconds",
                                "Age of the oldest pending outbox message (0: none)")
        age.add_metric([], facts["outbox_oldest_age_s"])
        yield age
        held = GaugeMetricFamily("cloudfilm_lease_held",
                                 "1 when a process of this node holds the lease of a "
                                 "singleton job, 0 when another node or nobody does",
                                 labels=("lease",))
        for name, mine in sorted(facts["leases"].items()):
            held.add_metric([name], 1.0 if mine else 0.0)
        yield held


def forget_dead_processes() -> int:
    """Drop the live gauges of processes of this node that are gone (a worker restarted by
    tornado's fork_processes): their cache sizes would otherwise be summed for ever."""
    folder = os.environ.get(ENV)
    if not MULTIPROCESS or not folder:
        return 0
    import re
    gone = 0
    for name in os.listdir(folder):
        m = re.match(r"gauge_live\w*_(\d+)\.db$", name)
        if not m:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, folder)
            gone += 1
        except PermissionError:
            pass
    return gone


def exposition(facts: dict | None) -> bytes:
    """The text of one scrape: every process's metrics and the database facts."""
    db = CollectorRegistry(auto_describe=False)
    db.register(DatabaseCollector(facts))
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry) + generate_latest(db)
    from prometheus_client import REGISTRY
    return generate_latest(REGISTRY) + generate_latest(db)


def timer():
    return time.perf_counter()
