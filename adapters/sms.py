"""SMS gateways for verification codes. Phone numbers must not leave the hospital: the
default gateway only logs (masked number, message length) and keeps the last messages in
memory for the developer; the HTTP gateway posts to the hospital's own SMS platform.

HTTP gateway protocol (JSON over HTTP POST to `sms_http_url`):
    request  {"phone": "13800138000", "message": "…", "template": "verify",
              "request_id": "…"}   with `Authorization: Bearer <token>` when a token file is set
    response any 2xx status = accepted; otherwise the send fails with the status in the error.
"""
from __future__ import annotations

import collections
import ipaddress
import json
import logging
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from models.catalog import mask_phone

log = logging.getLogger(__name__)


class SmsError(Exception):
    pass




class LogOnlyGateway:
    """Development gateway: nothing is sent. The last messages stay in memory (never in the
    log: they hold codes) so a developer or a test can read them."""

    name = "log"

    def __init__(self, keep: int = 50):
        self.sent: collections.deque = collections.deque(maxlen=keep)
        self._lock = threading.Lock()

    def send(self, phone: str, message: str) -> None:
        with self._lock:
            self.sent.append((phone, message))
        log.info("SMS (log-only gateway, not sent) to %s: %d characters", mask_phone(phone),
                 len(message))

    def last_to(self, phone: str) -> str | None:
        with self._lock:
            for p, m in reversed(self.sent):
                if p == phone:
                    return m
        return None


def check_internal_url(url: str) -> None:
    """Refuse an SMS URL whose host is a public IP address (a cloud SMS service)."""
    p = urllib.parse.urlparse(url)
    if p.scheme not in ("http", "https") or not p.hostname:
        raise SmsError(f"sms_http_url must be an http(s) URL (got {url!r})")
    try:
        ip = ipaddress.ip_address(p.hostname)
    except ValueError:
        return      # a host name: the hospital's DNS decides; documented in README
    if ip.is_global:
        raise SmsError(f"sms_http_url points to a public address {ip}: phone numbers must "
                       "not leave the hospital; use the hospital's own SMS platform")


class HttpGateway:
    name = "http"

    def __init__(self, url: str, token: str = "", timeout_s: float = 5.0):
        check_internal_url(url)
        self.url, self.token, self.timeout_s = url, token, timeout_s

    def send(self, phone: str, message: str) -> None:
        body = json.dumps({"phone": phone, "message": message, "template": "verify",
                           "request_id": secrets.token_hex(8)}, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                r.read(4096)
                status = r.status
        except urllib.error.HTTPError as exc:
            raise SmsError(f"SMS platform answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SmsError(f"SMS platform unreachable: {type(exc).__name__}") from None
        if not 200 <= status < 300:
            raise SmsError(f"SMS platform answered HTTP {status}")
        log.info("SMS sent to %s via the hospital SMS platform", mask_phone(phone))


def make_gateway(kind: str, url: str = "", token_file: str | Path = "",
                 timeout_s: float = 5.0):
    if kind == "log":
        return LogOnlyGateway()
    if kind == "http":
        if not url:
            raise SmsError("sms_gateway = 'http' needs sms_http_url")
        token = Path(token_file).read_text().strip() if token_file else ""
        return HttpGateway(url, token, timeout_s)
    raise SmsError(f"unknown SMS gateway {kind!r}: use 'log' or 'http'")
