"""Operations: GET /readyz (is this node ready for work) and GET /metrics (Prometheus text
format, server/metrics.py). /healthz (alive) is in handlers/api.py.

/metrics is not public: it answers the loopback and the addresses of the admin allow-list
(the security policy's admin_allow_list, as admin functions), and refuses (403) any other
address and any request forwarded by a proxy that is not in trusted_proxies (its real
client is unknown: behind nginx on the same machine every client would look like loopback).
Nothing in it names a patient, a study or a person."""
from __future__ import annotations

import asyncio
import ipaddress
import logging

from models import db as dbmod

from .. import metrics, settings
from .api import ReadyHandler
from .base import ApiError, BaseHandler

log = logging.getLogger(__name__)


def metrics_allowed(handler) -> bool:
    req = handler.request
    ip = handler.client_ip()
    forwarded = req.headers.get("X-Forwarded-For") or req.headers.get("X-Real-IP")
    if forwarded and ip == getattr(req, "proxy_peer", ip):
        return False            # forwarded by a proxy we do not trust: client unknown
    try:
        if ipaddress.ip_address(ip).is_loopback:
            return True
    except ValueError:
        return False
    from models.staff import ip_in_networks
    return ip_in_networks(ip, settings.policy(handler.ctx)["admin_allow_list"])


def _facts():
    try:
        from models.operations import operations_facts
        with dbmod.connection():
            return operations_facts()
    except Exception as exc:  # noqa: BLE001 - a scrape still answers without the database
        log.info("metrics: database facts unavailable: %s", type(exc).__name__)
        return None


class MetricsHandler(BaseHandler):
    """GET /metrics: Prometheus text format (prometheus_client), for the whole node."""

    async def get(self) -> None:
        if not metrics_allowed(self):
            raise ApiError(403, "指标只对本机和管理网络开放 / metrics are only available from "
                                "this machine and the admin allow-list")
        sync = self.ctx.metrics_sync
        if sync is None:
            sync = self.ctx.metrics_sync = metrics.CacheSync(self.ctx.renders)
        sync()
        loop = asyncio.get_running_loop()
        facts = await loop.run_in_executor(self._facts_pool(), _facts)
        body = await loop.run_in_executor(self._facts_pool(), metrics.exposition, facts)
        self.set_header("Content-Type", metrics.CONTENT_TYPE)
        self.set_header("Cache-Control", "no-store")
        self.finish(body)

    def _facts_pool(self):
        # the health probe's own thread: never queued behind image lookups
        from .api import HealthProbe
        probe = self.ctx.health_probe
        if probe is None:
            probe = self.ctx.health_probe = HealthProbe(self.ctx)
        return probe.pool


def startup(ctx) -> None:
    """Count inbound messages; in a running server copy the render caches' counters into
    the metrics every metrics.SYNC_S seconds (each process its own)."""
    from models import integration
    if metrics.inbound_observer not in integration.INBOUND_OBSERVERS:
        integration.INBOUND_OBSERVERS.append(metrics.inbound_observer)
    if ctx.metrics_sync is None:
        ctx.metrics_sync = metrics.CacheSync(ctx.renders)
    metrics.forget_dead_processes()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return                     # outside a running server (tests): synced at each scrape
    import tornado.ioloop
    tornado.ioloop.PeriodicCallback(ctx.metrics_sync, metrics.SYNC_S * 1000).start()


def routes(ctx) -> list:
    d = {"ctx": ctx}
    return [
        (r"/readyz", ReadyHandler, d),
        (r"/metrics", MetricsHandler, d),
    ]
