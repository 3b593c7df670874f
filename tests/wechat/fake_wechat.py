"""A local stand-in for WeChat's servers (api.weixin.qq.com and open.weixin.qq.com) that
speaks their wire format: the web authorisation page (redirects back with code and state),
/sns/oauth2/access_token, /cgi-bin/token, /cgi-bin/message/template/send (with
client_msg_id de-duplication), /cgi-bin/ticket/getticket and /cgi-bin/getcallbackip.
Failures are injected per endpoint: 'http500', 'busy' (errcode -1), 'timeout' (answers after
the client gave up), 'invalid_token' (40001).
"""
from __future__ import annotations

import http.server
import json
import secrets
import threading
import time
from urllib.parse import parse_qs, urlencode, urlparse

APP_ID = "wx1234567890abcdef"
APP_SECRET = "s3cr3t-app-secret-0123456789abcd"


class FakeWechat:
    def __init__(self, app_id: str = APP_ID, secret: str = APP_SECRET):
        self.app_id, self.secret = app_id, secret
        self.lock = threading.Lock()
        self.token_calls = 0
        self.token_delay_s = 0.0
        self.tokens: set[str] = set()
        self.current_openid = "oFAKE_openid_patient_0001"
        self.snapshot = False
        self.codes: dict[str, str] = {}
        self.failures: dict[str, list[str]] = {}    # path -> modes, consumed one per call
        self.sent: list[dict] = []                  # template messages delivered
        self.send_calls = 0
        self.by_client_msg: dict[tuple, int] = {}
        self.next_msgid = 1000
        self.ticket_calls = 0
        self.requests: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                fake._dispatch(self, "GET")

            def do_POST(self):
                fake._dispatch(self, "POST")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def api_base(self) -> str:
        return self.url

    @property
    def oauth_base(self) -> str:
        return self.url + "/connect/"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail(self, path: str, *modes: str) -> None:
        with self.lock:
            self.failures.setdefault(path, []).extend(modes)

    def invalidate_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    # ---------------------------------------------------------------------------------------
    def _send(self, h, status: int, obj=None, headers=None) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode() if obj is not None else b""
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if obj is not None:
            h.send_header("Content-Type", "application/json; encoding=utf-8")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _injected(self, h, path: str) -> bool:
        with self.lock:
            modes = self.failures.get(path) or []
            mode = modes.pop(0) if modes else None
        if mode is None:
            return False
        if mode == "http500":
            self._send(h, 500, {"error": "internal"})
        elif mode == "busy":
            self._send(h, 200, {"errcode": -1, "errmsg": "system error"})
        elif mode == "invalid_token":
            self._send(h, 200, {"errcode": 40001, "errmsg": "invalid credential"})
        elif mode == "timeout":
            time.sleep(3.5)
            try:
                self._send(h, 200, {"errcode": -1, "errmsg": "late"})
            except OSError:
                pass
        else:
            return False
        return True

    def _token_ok(self, q) -> bool:
        return q.get("access_token", [""])[0] in self.tokens

    def _dispatch(self, h, method: str) -> None:
        u = urlparse(h.path)
        q = parse_qs(u.query)
        path = u.path
        self.requests.append(f"{method} {path}")
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        if self._injected(h, path):
            return
        one = lambda k: q.get(k, [""])[0]  # noqa: E731
        if path == "/connect/oauth2/authorize":
            # WeChat's authorisation page: snsapi_base is silent, it redirects at once
            if one("appid") != self.app_id or one("scope") != "snsapi_base" \
                    or one("response_type") != "code":
                self._send(h, 400, {"errcode": 10003, "errmsg": "redirect_uri/appid/scope"})
                return
            code = "CODE" + secrets.token_hex(8)
            with self.lock:
                self.codes[code] = self.current_openid
            target = one("redirect_uri") + "?" + urlencode({"code": code, "state": one("state")})
            self._send(h, 302, None, {"Location": target})
        elif path == "/sns/oauth2/access_token":
            with self.lock:
                openid = self.codes.pop(one("code"), None)
            if one("appid") != self.app_id or one("secret") != self.secret:
                self._send(h, 200, {"errcode": 40125, "errmsg": "invalid appsecret"})
            elif openid is None or one("grant_type") != "authorization_code":
                self._send(h, 200, {"errcode": 40029, "errmsg": "invalid code"})
            else:
                out = {"access_token": "OAUTH" + secrets.token_hex(8), "expires_in": 7200,
                       "refresh_token": "R" + secrets.token_hex(8), "openid": openid,
                       "scope": "snsapi_base"}
                if self.snapshot:
                    out["is_snapshotuser"] = 1
                self._send(h, 200, out)
        elif path == "/cgi-bin/token":
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            if one("appid") != self.app_id or one("secret") != self.secret \
                    or one("grant_type") != "client_credential":
                self._send(h, 200, {"errcode": 40013, "errmsg": "invalid appid"})
                return
            tok = "ACCESS" + secrets.token_hex(12)
            with self.lock:
                self.token_calls += 1
                self.tokens.add(tok)
            self._send(h, 200, {"access_token": tok, "expires_in": 7200})
        elif path == "/cgi-bin/message/template/send" and method == "POST":
            if not self._token_ok(q):
                self._send(h, 200, {"errcode": 40001, "errmsg": "invalid credential"})
                return
            data = json.loads(body)
            with self.lock:
                self.send_calls += 1
                dedup = (data.get("touser"), data.get("client_msg_id"))
                if data.get("client_msg_id") and dedup in self.by_client_msg:
                    msgid = self.by_client_msg[dedup]          # accepted once, not re-sent
                else:
                    self.next_msgid += 1
                    msgid = self.next_msgid
                    self.by_client_msg[dedup] = msgid
                    self.sent.append({**data, "msgid": msgid})
            self._send(h, 200, {"errcode": 0, "errmsg": "ok", "msgid": msgid})
        elif path == "/cgi-bin/ticket/getticket":
            if not self._token_ok(q):
                self._send(h, 200, {"errcode": 40001, "errmsg": "invalid credential"})
                return
            with self.lock:
                self.ticket_calls += 1
            self._send(h, 200, {"errcode": 0, "errmsg": "ok", "ticket": "TICKET" +
                                secrets.token_hex(8), "expires_in": 7200})
        elif path == "/cgi-bin/getcallbackip":
            if not self._token_ok(q):
                self._send(h, 200, {"errcode": 40001, "errmsg": "invalid credential"})
                return
            self._send(h, 200, {"ip_list": ["127.0.0.1"]})
        else:
            self._send(h, 404, {"errcode": 404, "errmsg": "not found"})
