"""Run-time settings: the one way an admin changes a setting while the server runs.

The settings themselves are one table, server/config.py SETTINGS: each row says whether it
may change at run time (``runtime``) and in which group (``group``). The system admin's page
(/api/admin/settings) changes every run-time group but "security"; the security admin's page
(/api/admin/security) changes "security" only (三员分立).

`change()` validates a change (the row's type and bounds, plus the few rules a row cannot
state: known roles, a non-empty allow-list that still holds the admin's own address, an idle
timeout within the session's lifetime), stores it with one audit record per setting, and
publishes it: this process applies it at once, other processes and machines within
`REFRESH_S` (`refresh()`, run by a timer, and by `policy()` on each sign-in decision).
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Any

from models.errors import DomainError
from models.staff import (Actor, forget_settings_cache, ip_in_networks, setting_rows,
                          store_settings, stored_settings)

from . import policy as access_policy
from .config import (GROUPS, LEVEL3_TOTP_ROLES, SETTINGS, SETTINGS_BY_NAME, ConfigError,
                     Setting, coerce)

log = logging.getLogger(__name__)

PREFIX = "conf."          # stored key of a run-time setting: conf.NAME
REFRESH_S = 5
SECURITY = "security"
LIST_SETTINGS = {"totp_required_roles", "admin_allow_list"}   # comma-separated text
# 等保三级 (GB/T 22239-2019 level 3) floors nobody can lower: the rows' minimum/maximum in
# server/config.py (checked there at start-up and on stored values too) and the admin roles
# in totp_required_roles (config.LEVEL3_TOTP_ROLES).
LEVEL3_LIMITS = {"password_min_length", "password_min_classes", "password_history",
                 "password_max_age_days", "lockout_failures"}


class SettingsError(DomainError):
    status = 400


class Refused(SettingsError):
    """A change that would lock every administrator out."""
    status = 409


def runtime_settings(groups: set[str] | frozenset[str] | None = None) -> list[Setting]:
    return [s for s in SETTINGS if s.runtime and (groups is None or s.group in groups)]


def admin_groups() -> frozenset[str]:
    """The system admin's groups: every run-time group but the security admin's."""
    return frozenset(GROUPS) - {SECURITY}


def refresh(ctx) -> None:
    """Apply the stored run-time settings to this process's config (blocking: db)."""
    stored = stored_settings()
    ctx.config.apply_stored({k[len(PREFIX):]: v for k, v in stored.items()
                             if k.startswith(PREFIX)})


def split_list(text: Any) -> list[str]:
    if isinstance(text, (list, tuple)):
        return [str(x).strip() for x in text if str(x).strip()]
    return [x.strip() for x in str(text or "").replace(";", ",").replace("\n", ",").split(",")
            if x.strip()]


def policy(ctx) -> dict[str, Any]:
    """The security policy in force (blocking: reads stored settings, cached for seconds)."""
    refresh(ctx)
    out = {s.name: getattr(ctx.config, s.name) for s in runtime_settings({SECURITY})}
    for name in LIST_SETTINGS:
        out[name] = split_list(out[name])
    return out


def _label(s: Setting) -> tuple[str, str]:
    zh, _, en = (s.label or f"{s.name} / {s.name}").partition(" / ")
    return zh, en or s.name


def _clean(s: Setting, value: Any, client_ip: str) -> Any:
    """One value checked against its row and the rules the row cannot state."""
    zh, en = _label(s)
    if s.name == "totp_required_roles":
        roles = split_list(value)
        bad = [r for r in roles if r not in access_policy.ROLES]
        if bad:
            raise SettingsError(f"未知角色：{', '.join(bad)[:100]} / unknown role")
        missing = [access_policy.ROLES[r] for r in LEVEL3_TOTP_ROLES if r not in roles]
        if missing:
            raise SettingsError(f"不符合等保三级要求：系统管理员、安全管理员、审计管理员必须使用动态口令"
                                f"（TOTP）登录，不能去掉{'、'.join(missing)} / level 3 floor: every "
                                "admin role must sign in with TOTP")
        value = ",".join(sorted(set(roles)))
    elif s.name == "admin_allow_list":
        nets = split_list(value)
        if not nets:
            raise Refused("管理网络白名单不能为空，否则任何管理员都无法登录 / the admin allow-list "
                          "must not be empty: it would lock every administrator out")
        for n in nets:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise SettingsError(f"“{n[:60]}”不是有效的 IP 地址或网段（例如 192.168.1.0/24） / "
                                    "not an IP address or network") from None
        if not ip_in_networks(client_ip, nets):
            raise Refused(f"新的白名单不包含您当前的地址 {client_ip}，保存后您将无法再管理系统 / the "
                          f"new allow-list excludes your own address {client_ip}: you would "
                          "lock yourself out")
        value = ",".join(nets)
    elif s.type is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if s.type is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise SettingsError(f"设置值无效：{zh}须为整数 / invalid value: {en} must be a whole "
                            "number")
    if s.name in LEVEL3_LIMITS and not s.minimum <= value <= s.maximum:
        raise SettingsError(f"不符合等保三级要求：{zh}须在 {s.minimum} 到 {s.maximum} 之间 / "
                            f"level 3 floor: {en} must be between {s.minimum} and "
                            f"{s.maximum}")
    if s.type is int and s.minimum is not None and s.maximum is not None and \
            not s.minimum <= value <= s.maximum:
        raise SettingsError(f"设置值无效：{zh}须在 {s.minimum} 到 {s.maximum} 之间 / invalid "
                            f"value: {en} must be between {s.minimum} and {s.maximum}")
    try:
        return coerce(s, value, "the admin page")
    except ConfigError as exc:
        raise SettingsError(f"设置值无效 / invalid value: {exc}") from None


def validate(ctx, changes: Any, *, groups: frozenset[str], client_ip: str) -> dict[str, Any]:
    """{name: clean value, or None for "back to the configured value"}; raises SettingsError."""
    if not isinstance(changes, dict) or not changes:
        raise SettingsError("没有要修改的设置 / nothing to change")
    allowed = {s.name: s for s in runtime_settings(groups)}
    unknown = [str(k)[:60] for k in changes if k not in SETTINGS_BY_NAME]
    if unknown:
        raise SettingsError(f"未知的设置：{', '.join(unknown)[:200]} / unknown setting")
    clean: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in allowed:
            raise SettingsError(f"设置“{name}”不能在页面上修改 / this setting cannot be changed "
                                "here at run time")
        clean[name] = None if value is None else _clean(allowed[name], value, client_ip)
    if SECURITY in groups:
        merged = {n: ctx.config.base_value(n) if v is None else v for n, v in clean.items()}
        idle = merged.get("session_idle_minutes", ctx.config.session_idle_minutes)
        life = merged.get("session_absolute_hours", ctx.config.session_absolute_hours)
        if idle > life * 60:
            raise SettingsError("空闲超时不能长于会话最长时长 / the idle timeout cannot be longer "
                                "than the absolute session lifetime")
    return clean


def change(ctx, changes: Any, *, groups: frozenset[str], actor: Actor) -> list[str]:
    """Validate, store (one audit record per setting that changed) and publish a change.
    Returns the names that changed (blocking: db)."""
    refresh(ctx)
    clean = validate(ctx, changes, groups=groups, client_ip=actor.ip)
    area = SECURITY if groups == {SECURITY} else "settings"
    changed = store_settings({PREFIX + n: v for n, v in clean.items()}, actor=actor,
                             auditor=ctx.auditor, area=area)
    forget_settings_cache()
    refresh(ctx)
    return [k[len(PREFIX):] for k in changed]


def describe(ctx, groups: frozenset[str]) -> list[dict]:
    """The run-time settings of `groups` for an admin page, with who changed them last."""
    rows = {k: v for k, v in setting_rows(PREFIX).items()}
    out = []
    for group, label in GROUPS.items():
        if group not in groups:
            continue
        items = []
        for s in runtime_settings({group}):
            row = rows.get(s.name)
            items.append({"name": s.name, "type": s.type.__name__, "help": s.help,
                          "label": s.label, "choices": list(s.choices), "minimum": s.minimum,
                          "maximum": s.maximum, "default": ctx.config.base_value(s.name),
                          "value": getattr(ctx.config, s.name), "stored": row is not None,
                          "updated_by": row["updated_by"] if row else None,
                          "updated_at": row["updated_at"] if row else None})
        if items:
            out.append({"group": group, "label": label, "settings": items})
    return out


def stored_rows(group: str) -> dict[str, dict]:
    names = {s.name for s in runtime_settings({group})}
    return {k: v for k, v in setting_rows(PREFIX).items() if k in names}
