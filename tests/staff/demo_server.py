"""One live server over the demo data (11 exams of 5 patients) per test module: loading the
demo takes ~20 s, so modules that need it share one (SQLite or MariaDB, like conftest)."""
from __future__ import annotations

import secrets

import pytest

from tests.conftest import MYSQL_BASE, LiveServer, _mysql_reachable, test_backend


def demo_database_url(tmp):
    if test_backend() != "mysql":
        return f"sqlite:///{tmp / 'demo.db'}", None
    problem = _mysql_reachable()
    if problem:
        pytest.skip(f"MariaDB unreachable: {problem}")
    name = f"cloudfilm_test_{secrets.token_hex(4)}"
    return f"{MYSQL_BASE}/{name}", name


def drop_mysql(name):
    from tests.conftest import drop_mysql_database
    drop_mysql_database(name)


def start_demo_server(tmp):
    import io

    from server.cli import load_demo
    from server.config import load_config
    from server.context import open_context
    url, name = demo_database_url(tmp)
    config = load_config(path=tmp / "none.toml", env={}, overrides={
        "database_url": url, "data_dir": str(tmp / "data"),
        "secret_key_file": str(tmp / "secret.key"), "demo_data": False,
        "demo_ct_slices": 8, "render_threads": 2})
    ctx = open_context(config)
    load_demo(ctx, out=io.StringIO())
    server = LiveServer(ctx)
    return server, ctx, name


def session_cookie(username, roles, password="Matrix-Pass-1"):
    """A signed-in staff session made directly (no second factor): (cookie, csrf)."""
    from models.accounts import create_user
    from models.schema import StaffUser
    from models.sessions import create_session
    u = StaffUser.get_or_none(StaffUser.username == username) or \
        create_user(username, password, list(roles), must_change_password=False)
    new = create_session("staff", staff_user=u, verified=True)
    return f"cf_session={new.token}", new.session.csrf_token
