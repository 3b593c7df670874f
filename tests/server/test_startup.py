"""Start-up: `routes(ctx)` only returns routes; each route module's `startup(ctx)` and the
background modules start what runs; a module that fails to import stops start-up; what the
context carries at run time is declared on AppContext."""
from __future__ import annotations

import ast
import asyncio
import dataclasses
import re
import sys
import types

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.db


def test_routes_have_no_side_effects_and_startup_has_them(ctx):
    from adapters import outbox
    from server import app
    outbox.SENDERS.pop("wechat", None)

    async def build():                    # in a running loop, as serve builds them
        return app.make_routes(ctx)
    routes = asyncio.run(build())
    assert len(routes) > 50
    assert "wechat" not in outbox.SENDERS
    assert ctx.renders.integrity_hook is None
    assert ctx.settings_refresh is None
    _store_share_max_days(30)
    assert ctx.config.share_max_days == 90          # not applied by building routes

    async def start():
        app.startup(ctx)
        running = ctx.settings_refresh is not None and ctx.settings_refresh.is_running()
        ctx.settings_refresh.stop()
        return running
    assert asyncio.run(start()) is True   # the 5 s settings refresh of a serving process
    assert "wechat" in outbox.SENDERS      # handlers/wechat.py startup
    assert ctx.renders.integrity_hook is not None   # handlers/security.py startup
    # handlers/staff.py startup: stored run-time settings applied
    assert ctx.config.share_max_days == 30
    assert ctx.config.origins["share_max_days"] == "stored setting (admin page)"


def _store_share_max_days(days: int) -> None:
    from models.schema import RuntimeSetting
    from models.staff import forget_settings_cache
    RuntimeSetting.create(key="conf.share_max_days", value=str(days))
    forget_settings_cache()


def test_startup_outside_a_loop_starts_no_timer(ctx):
    from server import app
    _store_share_max_days(45)
    app.startup(ctx)
    assert ctx.config.share_max_days == 45 and ctx.settings_refresh is None


def test_every_route_module_has_routes_and_no_side_effect_in_them():
    """routes(ctx) bodies call nothing but building the list (no start/register/timer)."""
    from server import app
    bad = re.compile(r"PeriodicCallback|\.start\(|register|settings\.refresh|install_")
    for name in app.ROUTE_MODULES:
        path = ROOT / "server" / "handlers" / f"{name}.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        fns = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "routes"]
        assert fns, f"server/handlers/{name}.py has no routes(ctx)"
        src = ast.get_source_segment(path.read_text(encoding="utf-8"), fns[0])
        assert not bad.search(src), f"server/handlers/{name}.py routes() starts something"


def _broken_module(monkeypatch, fullname: str, error: Exception):
    class Finder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == fullname:
                raise error
            return None
    monkeypatch.setattr(sys, "meta_path", [Finder] + sys.meta_path)
    monkeypatch.delitem(sys.modules, fullname, raising=False)


def test_a_route_module_that_fails_to_import_stops_start_up(ctx, monkeypatch):
    from server import app
    monkeypatch.setattr(app, "ROUTE_MODULES", app.ROUTE_MODULES + ("gone",))
    with pytest.raises(ModuleNotFoundError, match="gone"):
        app.make_routes(ctx)
    with pytest.raises(ModuleNotFoundError, match="gone"):
        app.startup(ctx)
    # a listed module whose own import fails (a broken feature) is not skipped either
    monkeypatch.setattr(app, "ROUTE_MODULES", ("wechat",))
    _broken_module(monkeypatch, "server.handlers.wechat",
                   ModuleNotFoundError("No module named 'server.handlers.wechat'",
                                       name="server.handlers.wechat"))
    with pytest.raises(ModuleNotFoundError):
        app.make_routes(ctx)


def test_a_background_module_that_fails_to_import_stops_start_up(ctx, monkeypatch):
    from server import cli
    monkeypatch.setattr(cli, "BACKGROUND_MODULES", ("no_such_service",))
    with pytest.raises(ModuleNotFoundError, match="no_such_service"):
        asyncio.run(cli.start_background(ctx, primary=True))


def test_background_modules_start_singleton_jobs_in_any_process(ctx, monkeypatch):
    """A non-primary process (no listeners) still takes the lease of a free singleton job:
    the outbox worker runs in the process holding 'outbox'."""
    from server import cli, integration, maintenance, wechat_service
    seen = {}

    async def go():
        await cli.start_background(ctx, primary=False)
        for _ in range(100):
            if integration.SERVICES.outbox is not None:
                break
            await asyncio.sleep(0.05)
        seen["outbox"] = integration.SERVICES.outbox is not None
        seen["listeners"] = (integration.SERVICES.scp, integration.SERVICES.mllp)
        await integration.stop_background()
        await wechat_service.stop_background()
        await maintenance.stop_background()
    asyncio.run(go())
    assert seen["outbox"] and seen["listeners"] == (None, None)
    from models import leases
    from models.db import database
    with database.connection_context():
        names = {r.name: r.holder for r in leases.Lease.select()}
    # released on a clean stop
    assert names == {"outbox": "", "integrity_scrub": "", "wechat_token": ""}, names


def test_run_time_fields_are_declared_on_the_context(ctx):
    from server.context import AppContext
    declared = {f.name for f in dataclasses.fields(AppContext)}
    assert {"sms_gateway", "health_probe", "import_api", "settings_refresh"} <= declared
    # nothing attaches an undeclared attribute to the context any more
    assign = re.compile(r"\bctx\.([A-Za-z_]+)\s*=[^=]")
    problems = []
    for f in list((ROOT / "server").rglob("*.py")) + list((ROOT / "adapters").rglob("*.py")):
        if f.name == "tls.py":
            continue                      # its `ctx` is an ssl.SSLContext
        text = f.read_text(encoding="utf-8")
        if "ctx.__dict__" in text or re.search(r"setattr\((self\.)?ctx\b", text):
            problems.append(f"{f.relative_to(ROOT)}: ctx.__dict__ / setattr(ctx")
        for m in assign.finditer(text):
            if m.group(1) not in declared:
                problems.append(f"{f.relative_to(ROOT)}: ctx.{m.group(1)} is not declared")
    assert not problems, "\n".join(problems)
    ctx.sms_gateway = types.SimpleNamespace(send=lambda *a: None)   # tests still set it
    assert ctx.sms_gateway is not None
