"""WeChat in the server: the current configuration (secrets read from their files), the
service object built from it, the outbox sender of the 'wechat' channel, the background
refresher of the shared access token, and the status the admin page shows.

Everything WeChat is off until the AppID and the files holding the AppSecret, the callback
Token and the EncodingAESKey are configured (`wechat_settings(ctx)` is None until then).
Settings may change at run time (the admin page): the service is rebuilt when they do.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from adapters import outbox
from adapters.wechat import (WechatApiError, WechatService, WechatSettings, check_aes_key,
                             make_sender, parse_template_fields)
from models import wechat as store
from models.clock import utcnow
from models.db import connection
from models.leases import SingletonJob

log = logging.getLogger(__name__)

REFRESH_CHECK_S = 30
_pool = ThreadPoolExecutor(4, thread_name_prefix="wechat")
_state: dict = {"key": None, "service": None, "files": {}}


def _read_secret(ctx, name: str) -> tuple[str, str]:
    """(value, problem) of a *_file setting."""
    raw = getattr(ctx.config, name)
    if not raw:
        return "", f"{name} is not set"
    path = ctx.config.path(name)
    try:
        st = path.stat()
        cached = _state["files"].get(str(path))
        if cached and cached[0] == (st.st_mtime_ns, st.st_size):
            return cached[1], ""
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        return "", f"{name}: cannot read {path} ({type(exc).__name__})"
    if not value:
        return "", f"{name}: {path} is empty"
    _state["files"][str(path)] = ((st.st_mtime_ns, st.st_size), value)
    return value, ""


def configuration(ctx) -> tuple[WechatSettings | None, list[str]]:
    """The settings, or None and the list of what is missing or wrong."""
    c = ctx.config
    problems = []
    if not c.wechat_app_id:
        problems.append("wechat_app_id is not set")
    secret, p1 = _read_secret(ctx, "wechat_app_secret_file")
    token, p2 = _read_secret(ctx, "wechat_callback_token_file")
    aes, p3 = _read_secret(ctx, "wechat_aes_key_file")
    problems += [p for p in (p1, p2, p3) if p]
    if aes:
        try:
            check_aes_key(aes)
        except ValueError as exc:
            problems.append(f"wechat_aes_key_file: {exc}")
    if token and not (3 <= len(token) <= 32 and token.isalnum()):
        problems.append("wechat_callback_token_file: the Token must be 3-32 letters or digits")
    try:
        parse_template_fields(c.wechat_template_fields)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        return None, problems
    return WechatSettings(
        app_id=c.wechat_app_id, app_secret=secret, token=token, aes_key=aes,
        public_url=c.base_url, api_base_url=c.wechat_api_base_url,
        oauth_base_url=c.wechat_oauth_base_url, timeout_s=float(c.wechat_timeout_s),
        message_mode=c.wechat_message_mode, replay_window_s=c.wechat_replay_window_s,
        notify_enabled=c.wechat_notify_enabled, template_id=c.wechat_template_id,
        template_fields=c.wechat_template_fields, reply_text=c.wechat_reply_text,
        refresh_margin_s=c.wechat_token_refresh_margin_s), []


def wechat_settings(ctx) -> WechatSettings | None:
    return configuration(ctx)[0]


def service(ctx) -> WechatService | None:
    """The service for the current settings (rebuilt when they change); None when off."""
    s = wechat_settings(ctx)
    if s is None:
        return None
    if _state["key"] != s:
        _state["service"] = WechatService(s)
        _state["key"] = s
    return _state["service"]


def in_db_thread(fn, *args, **kwargs):
    """Run fn in the WeChat pool with a database connection (closed afterwards)."""
    def run():
        with connection():
            return fn(*args, **kwargs)
    return asyncio.get_running_loop().run_in_executor(_pool, run)


def register(ctx) -> None:
    """Register the 'wechat' outbox channel (every process; the one holding the 'outbox'
    lease runs the worker). Idempotent."""
    outbox.register_sender(store.CHANNEL, make_sender(lambda: service(ctx), in_db_thread))


# background ---------------------------------------------------------------------------------
async def refresh_loop(ctx) -> None:
    """Renew the shared access token (and JS-SDK ticket once used) before they expire."""
    while True:
        try:
            svc = service(ctx)
            if svc is not None:
                await in_db_thread(_refresh_due, svc)
        except asyncio.CancelledError:
            raise
        except WechatApiError as exc:
            log.warning("WeChat access token refresh failed: %s", exc)
        except Exception:  # noqa: BLE001 - the refresher never dies
            log.exception("WeChat token refresher failed")
        await asyncio.sleep(REFRESH_CHECK_S)


def _refresh_due(svc: WechatService) -> None:
    svc.token.refresh_if_due()
    ticket = store.read_credential(svc.s.app_id, "jsapi_ticket")
    if ticket.value:                  # only keep the ticket fresh once JS-SDK is in use
        svc.ticket.refresh_if_due()


_tasks: list = []
_jobs: list = []


async def start_background(ctx, primary: bool):
    """The 'wechat' outbox channel in every process; the token refresher in the one process
    of the deployment holding the 'wechat_token' lease (requests in any process still
    refresh an expired token themselves, under the credential's own refresh lease)."""
    register(ctx)

    def start():
        _tasks.append(asyncio.get_running_loop().create_task(refresh_loop(ctx)))

    def stop():
        while _tasks:
            _tasks.pop().cancel()
    _jobs.append(SingletonJob("wechat_token", start, stop).begin())
    if primary and wechat_settings(ctx) is None:
        log.info("WeChat is off (not configured)")
    return _tasks


async def stop_background() -> None:
    while _jobs:
        await _jobs.pop().close()
    for t in _tasks:
        t.cancel()
    _tasks.clear()


# status -------------------------------------------------------------------------------------
def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() + "Z" if t else None


def status(ctx) -> dict:
    """For the admin page (runs in a db thread): configured? working? no secrets shown."""
    s, problems = configuration(ctx)
    out: dict = {"configured": s is not None, "problems": problems,
                 "app_id": ctx.config.wechat_app_id,
                 "menu_url": ctx.config.base_url + "/wechat/",
                 "callback_url": ctx.config.base_url + "/wechat/callback",
                 "oauth_domain": ctx.config.base_url.split("://", 1)[-1].split("/")[0],
                 "message_mode": ctx.config.wechat_message_mode,
                 "template_id_set": bool(ctx.config.wechat_template_id),
                 "notify_enabled": bool(ctx.config.wechat_notify_enabled),
                 "bindings": store.binding_count(),
                 "notifications": store.notification_counts(),
                 "last_callback": store.last_inbound()}
    from .config import ROOT
    out["warnings"] = [f"{n}: the file is inside the project folder; keep secrets outside it"
                       for n in ("wechat_app_secret_file", "wechat_callback_token_file",
                                 "wechat_aes_key_file")
                       if getattr(ctx.config, n)
                       and not secret_path_outside_repo(ctx.config.path(n), ROOT)]
    if s is None:
        out["working"] = False
        return out
    tok = store.read_credential(s.app_id, "access_token")
    now = utcnow()
    valid = bool(tok.value and tok.expires_at and tok.expires_at > now)
    recent_error = bool(tok.last_error)       # a successful refresh clears it
    out["access_token"] = {
        "valid": valid,
        "expires_in_s": int((tok.expires_at - now).total_seconds()) if valid else 0,
        "refreshed_at": _iso(tok.refreshed_at), "refreshes": tok.refreshes,
        "last_error": tok.last_error if recent_error else "",
        "last_error_at": _iso(tok.last_error_at) if recent_error else None}
    out["working"] = valid and not recent_error
    return out


def check_now(ctx) -> dict:
    """Admin 'test': get a token (if needed) and make one call with it."""
    svc = service(ctx)
    if svc is None:
        return {"ok": False, "error": "WeChat is not configured"}
    try:
        return svc.check()
    except WechatApiError as exc:
        return {"ok": False, "error": str(exc)}


def secret_path_outside_repo(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return True
    return False
