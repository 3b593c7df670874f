"""Shared fixtures: a fresh database (SQLite, or MariaDB with CLOUDFILM_TEST_DB=mysql),
a storage folder, the real DICOM corpus of pydicom-data, and a live server on port 0."""
from __future__ import annotations

import contextlib
import os
import secrets
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / "var" / "numba-cache"))
# servers the tests start run one process unless a test asks for more (the default, one per
# core, is what tests/test_run_sh.py runs): half the memory and start-up time per server
os.environ.setdefault("CLOUDFILM_PROCESSES", "1")

MYSQL_BASE = os.environ.get("CLOUDFILM_TEST_MYSQL", "mysql://root:@127.0.0.1:3306")
# the MariaDB test databases are named PREFIX<random> (several people may share one server)
MYSQL_DB_PREFIX = os.environ.get("CLOUDFILM_TEST_DB_PREFIX", "cloudfilm_test_")


def corpus_dir() -> Path:
    """pydicom-data's real DICOM files (about 70, many modalities and encodings)."""
    import data_store
    return Path(data_store.__file__).parent / "data"


def corpus_files() -> list[Path]:
    return sorted(corpus_dir().glob("*.dcm"))


def test_backend() -> str:
    return os.environ.get("CLOUDFILM_TEST_DB", "sqlite")


test_backend.__test__ = False  # not a test


def _mysql_reachable() -> str | None:
    import pymysql
    from urllib.parse import urlparse
    p = urlparse(MYSQL_BASE)
    try:
        conn = pymysql.connect(host=p.hostname, port=p.port or 3306, user=p.username or "root",
                               password=p.password or "", connect_timeout=3)
        conn.close()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture
def database_url(tmp_path):
    """A fresh, empty database for one test; dropped afterwards."""
    if test_backend() != "mysql":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    problem = _mysql_reachable()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"MariaDB at {MYSQL_BASE} unreachable in CI: {problem}")
        pytest.skip(f"MariaDB unreachable: {problem}")
    name = f"{MYSQL_DB_PREFIX}{secrets.token_hex(4)}"
    yield f"{MYSQL_BASE}/{name}"
    drop_mysql_database(name)


def drop_mysql_database(name: str) -> None:
    """Drop a test database on the MariaDB server of MYSQL_BASE (if it exists)."""
    if not name:
        return
    import pymysql
    from urllib.parse import urlparse
    p = urlparse(MYSQL_BASE)
    conn = pymysql.connect(host=p.hostname, port=p.port or 3306, user=p.username or "root",
                           password=p.password or "")
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


@pytest.fixture
def config(tmp_path, database_url):
    from server.config import load_config
    return load_config(path=tmp_path / "none.toml", env={}, overrides={
        "database_url": database_url,
        "data_dir": str(tmp_path / "data"),
        "secret_key_file": str(tmp_path / "secret.key"),
        "demo_data": False,
        "render_threads": 2,
    })


@pytest.fixture
def ctx(config):
    from server.context import open_context
    c = open_context(config)
    yield c
    c.close()


@pytest.fixture
def catalog(ctx):
    return ctx.catalog


def context_with_import_clients(tmp_path, config, clients: dict):
    """A context on the test's database and data folder whose import API knows `clients`
    (name -> key)."""
    from server.config import load_config
    from server.context import open_context
    f = tmp_path / "clients.toml"
    f.write_text("[clients]\n" + "".join(f'{k} = "{v}"\n' for k, v in clients.items()))
    cfg = load_config(path=tmp_path / "none.toml", env={}, overrides={
        **{k: getattr(config, k) for k in ("database_url", "data_dir", "secret_key_file")},
        "demo_data": False, "render_threads": 2, "import_api_clients_file": str(f)})
    return open_context(cfg)


class LiveServer:
    def __init__(self, ctx):
        import asyncio

        import tornado.httpserver
        import tornado.netutil

        from server.app import make_app, startup
        self.ctx = ctx
        sock = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.port = sock[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        ready = threading.Event()

        def run():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            # as serve does: the route modules' startup (stored settings, the 'wechat' outbox
            # sender, the integrity hook), here before the loop runs, so without the 5 s
            # settings refresh timer (tests change settings through the API or the ctx)
            startup(ctx)
            server = tornado.httpserver.HTTPServer(make_app(ctx))
            server.add_sockets(sock)
            self.server = server
            ready.set()
            self.loop.run_forever()
            server.stop()
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    token: str | None = None      # staff API token sent by default (see the live fixture)

    def request(self, method, path, body=None, headers=None, auth=True, timeout=30):
        import json as _json
        import urllib.error
        import urllib.request
        headers = dict(headers or {})
        if auth and self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else _json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url + path, data=data, headers=headers,
                                     method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def get(self, path, headers=None, timeout=30, auth=True):
        import urllib.error
        import urllib.request
        headers = dict(headers or {})
        if auth and self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def json(self, path, headers=None, auth=True):
        import json
        status, hdrs, body = self.get(path, headers, auth=auth)
        return status, json.loads(body)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def make_staff(username="doctor1", roles=("doctor",), password="Doctor-Pass-1",
               must_change=False):
    from models.accounts import create_user
    return create_user(username, password, list(roles), must_change_password=must_change)


def staff_token(username="doctor1", roles=("doctor",)):
    """A staff account with these roles and an API token for it."""
    from models.schema import StaffUser
    from models.sessions import create_api_token
    user = StaffUser.get_or_none(StaffUser.username == username) or make_staff(username, roles)
    return create_api_token(user, name="test")


def staff_session(username="admin1", roles=("sysadmin",)) -> tuple[str, str]:
    """A signed-in staff session (cookie value, CSRF token) for an account with these roles,
    as after password and TOTP. Admin-role accounts act only through such sessions: they
    cannot hold API tokens (separation of duties, tests/security/test_duties.py)."""
    from models.db import database
    from models.schema import StaffUser
    from models.sessions import create_session
    with database.connection_context():
        user = StaffUser.get_or_none(StaffUser.username == username) or \
            make_staff(username, roles)
        new = create_session("staff", staff_user=user, verified=True, ip="127.0.0.1")
    return new.token, new.session.csrf_token


@contextlib.contextmanager
def admins_sign_in_with_password_alone():
    """For tests of other things than the second factor (it has its own,
    tests/security/test_authentication.py): admin roles sign in with the password alone.
    The policy itself can no longer say so (level 3 floor: every admin role needs TOTP),
    so this wraps the sign-in's decision, in this process, for the duration only."""
    from server import signin
    original = signin._second_factor_needed

    def without_required_totp(ctx, user, pol, ip):
        return original(ctx, user, {**pol, "totp_required_roles": []}, ip)

    signin._second_factor_needed = without_required_totp
    try:
        yield
    finally:
        signin._second_factor_needed = original


def staff_headers(username="admin1", roles=("sysadmin",)) -> dict:
    """Request headers of a signed-in staff session (see staff_session)."""
    cookie, csrf = staff_session(username, roles)
    return {"Cookie": f"cf_session={cookie}", "X-CSRF-Token": csrf}


@pytest.fixture
def live(ctx):
    """A live server; requests carry a doctor's API token unless auth=False."""
    s = LiveServer(ctx)
    s.token = staff_token()
    yield s
    s.stop()
