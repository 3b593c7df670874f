"""Helpers for the staff tests: a browser-like client (cookie session + CSRF header)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from http.cookiejar import CookieJar

import pytest


class Browser:
    """Signs in through /api/auth/login and sends the cookie and X-CSRF-Token like the pages
    do. `call` returns (status, parsed JSON or raw bytes)."""

    def __init__(self, base: str):
        self.base = base
        self.jar = CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                  _NoRedirect())
        self.csrf = ""

    def call(self, method, path, body=None, headers=None, csrf=True):
        headers = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        if csrf and self.csrf and method not in ("GET", "HEAD"):
            headers.setdefault("X-CSRF-Token", self.csrf)
        req = urllib.request.Request(self.base + path, data=data, headers=headers,
                                     method=method)
        try:
            with self.opener.open(req, timeout=30) as r:
                status, hdrs, raw = r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            status, hdrs, raw = e.code, e.headers, e.read()
        self.last_headers = hdrs
        if (hdrs.get("Content-Type") or "").startswith("application/json"):
            return status, json.loads(raw)
        return status, raw

    def login(self, username, password, expect=200):
        status, body = self.call("POST", "/api/auth/login",
                                 {"username": username, "password": password})
        assert status == expect, body
        if status == 200:
            self.csrf = body["csrf_token"]
        return body


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None


@pytest.fixture
def browser(live):
    """A factory of signed-out browsers. Admin roles sign in with the password alone here
    (the second factor of server/handlers/security.py has its own tests): the stored
    policy cannot switch it off for admin roles (level 3 floor), so the sign-in's decision
    is wrapped for the test."""
    from models.staff import forget_settings_cache
    from tests.conftest import admins_sign_in_with_password_alone
    forget_settings_cache()
    with admins_sign_in_with_password_alone():
        yield lambda: Browser(live.url)
    forget_settings_cache()          # a test's stored settings do not reach the next one
