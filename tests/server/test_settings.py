"""Run-time settings: one table (server/config.py SETTINGS), one change function
(server/settings.py change) that validates, audits and publishes, and no default kept
anywhere else."""
from __future__ import annotations

import ast
import json

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.db


def _actor(ip="127.0.0.1"):
    from models.staff import Actor
    return Actor("staff", "sec9", ip)


def _audit(action):
    from models.schema import AuditEvent
    return [(e.object_id, e.detail) for e in
            AuditEvent.select().where(AuditEvent.action == action).order_by(AuditEvent.id)]


def test_a_change_is_checked_stored_audited_and_published_to_another_process(ctx, config):
    from server import settings
    from models.staff import forget_settings_cache
    other = type("OtherProcess", (), {})()        # a second process: its own Config
    other.config = _copy_config(config)
    changed = settings.change(ctx, {"lockout_failures": "4", "session_idle_minutes": 15},
                              groups=frozenset({"security"}), actor=_actor())
    assert sorted(changed) == ["lockout_failures", "session_idle_minutes"]
    assert settings.policy(ctx)["lockout_failures"] == 4 and ctx.config.session_idle_minutes == 15
    assert _audit("security.change") == [("conf.lockout_failures", "(default) -> 4"),
                                         ("conf.session_idle_minutes", "(default) -> 15")]
    forget_settings_cache()                        # the other process's cache has expired
    assert settings.policy(other)["lockout_failures"] == 4
    # the same value again changes nothing and writes no audit record
    assert settings.change(ctx, {"lockout_failures": 4}, groups=frozenset({"security"}),
                           actor=_actor()) == []
    # back to the configured value
    settings.change(ctx, {"lockout_failures": None}, groups=frozenset({"security"}),
                    actor=_actor())
    assert ctx.config.lockout_failures == 5
    assert ctx.config.origins["lockout_failures"] == "default"


def _copy_config(config):
    from server.config import Config
    return Config(dict(config._base), dict(config._base_origins))


@pytest.mark.parametrize("change, status, word", [
    ({"lockout_failures": 11}, 400, "之间"),
    ({"lockout_failures": "many"}, 400, "整数"),
    ({"lockout_failures": True}, 400, "整数"),
    ({"admin_allow_list": ""}, 409, "不能为空"),
    ({"admin_allow_list": "10.0.0.0/8"}, 409, "不包含您当前的地址"),
    ({"admin_allow_list": ["10.0.0.0/33"]}, 400, "不是有效"),
    ({"totp_required_roles": "boss"}, 400, "未知角色"),
    ({"session_idle_minutes": 120, "session_absolute_hours": 1}, 400, "空闲超时"),
    ({"pacs_host": "10.0.0.9"}, 400, "不能在页面上修改"),      # the system admin's group
    ({"colour": "red"}, 400, "未知的设置"),
    ([], 400, "没有要修改"),
])
def test_a_bad_change_is_refused_whole_and_stores_nothing(ctx, change, status, word):
    from models.errors import DomainError
    from server import settings
    with pytest.raises(DomainError) as err:
        settings.change(ctx, change, groups=frozenset({"security"}), actor=_actor())
    assert err.value.status == status and word in err.value.message
    assert _audit("security.change") == []
    assert ctx.config.lockout_failures == 5 and ctx.config.origins["lockout_failures"] == \
        "default"


def test_half_good_change_stores_nothing(ctx):
    from models.errors import DomainError
    from server import settings
    with pytest.raises(DomainError):
        settings.change(ctx, {"share_max_days": 30, "share_default_days": 0},
                        groups=settings.admin_groups(), actor=_actor())
    assert ctx.config.share_max_days == 90 and _audit("settings.change") == []


def test_a_stored_value_that_no_longer_passes_is_ignored(ctx):
    from models.schema import RuntimeSetting
    from models.staff import forget_settings_cache
    from server import settings
    RuntimeSetting.create(key="conf.lockout_failures", value=json.dumps(99))
    RuntimeSetting.create(key="conf.host", value=json.dumps("0.0.0.0"))   # not run-time
    forget_settings_cache()
    assert settings.policy(ctx)["lockout_failures"] == 5
    assert ctx.config.host == "127.0.0.1"


def test_migration_moves_the_old_security_rows(ctx):
    from models.migrations import m0051_one_settings_prefix as m
    from models.schema import RuntimeSetting
    from models.staff import forget_settings_cache
    from server import settings
    RuntimeSetting.create(key="security.admin_allow_list", value='["127.0.0.0/8", "10.2.0.0/16"]')
    RuntimeSetting.create(key="security.lockout_minutes", value="45")
    m.up(None)
    m.up(None)                                      # idempotent
    forget_settings_cache()
    keys = sorted(r.key for r in RuntimeSetting.select())
    assert keys == ["conf.admin_allow_list", "conf.lockout_minutes"]
    pol = settings.policy(ctx)
    assert pol["admin_allow_list"] == ["127.0.0.0/8", "10.2.0.0/16"]
    assert pol["lockout_minutes"] == 45


def test_no_default_is_kept_outside_the_table():
    """Code reads settings from the config; no module keeps its own copy of a setting's
    default (a dict of setting names to values, or a `.get(name, default)` of the config)."""
    from server.config import SETTINGS_BY_NAME
    problems = []
    for pkg in ("server", "models", "adapters"):
        for f in (ROOT / pkg).rglob("*.py"):
            if f.name == "config.py" or "migrations" in f.parts:
                continue
            tree = ast.parse(f.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Dict):
                    names = [k.value for k in node.keys if isinstance(k, ast.Constant)
                             and k.value in SETTINGS_BY_NAME]
                    values = [v for v in node.values if isinstance(v, ast.Constant)]
                    if len(names) >= 3 and len(values) >= 3:
                        problems.append(f"{f.relative_to(ROOT)}:{node.lineno} defaults "
                                        f"{names[:3]}…")
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get" \
                        and len(node.args) == 2 and isinstance(node.args[0], ast.Constant) \
                        and node.args[0].value in SETTINGS_BY_NAME \
                        and isinstance(node.args[1], ast.Constant) \
                        and node.args[1].value is not None:
                    problems.append(f"{f.relative_to(ROOT)}:{node.lineno} .get("
                                    f"{node.args[0].value!r}, default)")
    assert not problems, "\n".join(problems)
