"""The edge to WeChat's servers (wechatpy underneath): web authorisation, the deployment's
shared access token and JS-SDK ticket, template messages, the message callback's signature
and safe-mode encryption, and the outbox sender of the 'wechat' channel.

Every call to WeChat has a timeout. The access token is one per AppID for the whole
deployment: it lives in the database (models.wechat.WechatCredential), is refreshed before
it expires, and only by the process holding the refresh lease; the others wait for it.
Signatures are compared in constant time. Nothing here logs an openid together with patient
data, and nothing medical is ever sent: the template text is generic, the link is ours.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Callable

import requests
from defusedxml import ElementTree as SafeET
from wechatpy import WeChatClient, WeChatOAuth, parse_message
from wechatpy.crypto import PrpCrypto, WeChatCrypto
from wechatpy.exceptions import WeChatClientException, WeChatOAuthException
from wechatpy.replies import TextReply

from models import wechat as store
from models.clock import utcnow

from .hl7_mllp import DeliveryError

log = logging.getLogger(__name__)

INVALID_TOKEN_CODES = (40001, 40014, 42001)
PERMANENT_SEND_CODES = {40003: "openid not valid", 43004: "user unsubscribed",
                        43101: "user refused messages"}


class WechatApiError(Exception):
    """A WeChat call that failed (network, HTTP status or errcode); the message says which."""

    def __init__(self, message: str, errcode: int | None = None):
        super().__init__(message)
        self.errcode = errcode


class CallbackRefused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


# settings ---------------------------------------------------------------------------------------
TEMPLATE_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")


def parse_template_fields(text: str) -> list[tuple[str, str]]:
    """'thing1=检查报告已出具;time2={time}' → [(key, value)]. Only generic text: {time} is the
    one placeholder allowed, so no exam detail can reach Tencent."""
    out = []
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not TEMPLATE_KEY.match(key) or not value:
            raise ValueError(f"wechat_template_fields: {part!r} must look like key=value "
                             "(key: letters, digits, _)")
        if re.sub(r"\{time\}", "", value).count("{") or "}" in value.replace("{time}", ""):
            raise ValueError(f"wechat_template_fields: {value!r}: only the placeholder {{time}} "
                             "is allowed (the text must stay generic)")
        out.append((key, value))
    if not out:
        raise ValueError("wechat_template_fields is empty")
    return out


@dataclass(frozen=True)
class WechatSettings:
    app_id: str
    app_secret: str
    token: str
    aes_key: str
    public_url: str
    api_base_url: str = "https://api.weixin.qq.com"
    oauth_base_url: str = "https://open.weixin.qq.com/connect/"
    timeout_s: float = 5.0
    message_mode: str = "safe"
    replay_window_s: int = 300
    notify_enabled: bool = True
    template_id: str = ""
    template_fields: str = "thing1=检查报告已出具;time2={time};thing3=请点击查看"
    reply_text: str = "点击查看您的检查报告与云胶片：{link}"
    refresh_margin_s: int = 900

    @property
    def my_exams_url(self) -> str:
        return self.public_url.rstrip("/") + "/wechat/"

    @property
    def oauth_redirect_uri(self) -> str:
        return self.public_url.rstrip("/") + "/wechat/oauth/callback"


def check_aes_key(key: str) -> None:
    if len(key) != 43:
        raise ValueError("the EncodingAESKey must have 43 characters")
    import base64
    try:
        if len(base64.b64decode(key + "=")) != 32:
            raise ValueError
    except ValueError:
        raise ValueError("the EncodingAESKey is not valid (43 characters of base64)") from None


# the shared credential (access token, JS-SDK ticket) ------------------------------------------
def process_owner() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(4)}"


class SharedCredential:
    """One value per (AppID, kind) for the whole deployment, kept in the database.

    get() returns the stored value while it has more than `hard_margin_s` to live; otherwise
    one process takes the refresh lease (a conditional UPDATE) and fetches a new one, and the
    others wait for it. refresh_if_due() (the background refresher) renews it `margin_s`
    before expiry, so requests normally never wait.
    """

    def __init__(self, appid: str, kind: str, fetch: Callable[[], tuple[str, int]], *,
                 owner: str, margin_s: int = 900, timeout_s: float = 5.0,
                 hard_margin_s: int = 60):
        self.appid, self.kind, self.fetch = appid, kind, fetch
        self.owner = owner
        self.margin_s = margin_s
        self.hard_margin_s = hard_margin_s
        self.lease_s = 2 * timeout_s + 5
        self.wait_s = self.lease_s + 2

    def _usable(self, c: store.Credential, margin_s: int) -> bool:
        return bool(c.value and c.expires_at
                    and (c.expires_at - utcnow()).total_seconds() > margin_s)

    def get(self) -> str:
        deadline = time.monotonic() + self.wait_s
        delay = 0.02
        while True:
            c = store.read_credential(self.appid, self.kind)
            if self._usable(c, self.hard_margin_s):
                return c.value
            fresh_until = utcnow() + dt.timedelta(seconds=self.hard_margin_s)
            if store.claim_refresh(self.appid, self.kind, self.owner, self.lease_s,
                                   fresh_until=fresh_until):
                return self._refresh()
            if time.monotonic() > deadline:
                raise WechatApiError(f"timed out waiting for another process to refresh the "
                                     f"WeChat {self.kind}")
            time.sleep(delay)
            delay = min(0.25, delay * 2)

    def invalidate(self, stale: str) -> str:
        """WeChat said `stale` is not valid (40001/42001): refresh once, whoever sees it
        first; the others get the new value."""
        deadline = time.monotonic() + self.wait_s
        while True:
            if store.claim_refresh(self.appid, self.kind, self.owner, self.lease_s,
                                   stale_value=stale):
                return self._refresh()
            c = store.read_credential(self.appid, self.kind)
            if c.value and c.value != stale and self._usable(c, self.hard_margin_s):
                return c.value
            if time.monotonic() > deadline:
                raise WechatApiError(f"timed out waiting for a new WeChat {self.kind}")
            time.sleep(0.05)

    def refresh_if_due(self) -> bool:
        """Renew the value when it expires within margin_s. Returns whether it refreshed."""
        c = store.read_credential(self.appid, self.kind)
        if self._usable(c, self.margin_s):
            return False
        fresh_until = utcnow() + dt.timedelta(seconds=self.margin_s)
        if not store.claim_refresh(self.appid, self.kind, self.owner, self.lease_s,
                                   fresh_until=fresh_until):
            return False
        self._refresh()
        return True

    def _refresh(self) -> str:
        try:
            value, expires_in = self.fetch()
        except Exception as exc:  # noqa: BLE001 - recorded for the admin status, then raised
            store.release_refresh(self.appid, self.kind, self.owner, error=str(exc))
            raise
        store.store_credential(self.appid, self.kind, self.owner, value, int(expires_in))
        log.info("WeChat %s refreshed (valid %d s)", self.kind, int(expires_in))
        return value


# wechatpy clients pointed at the configured base URLs, with timeouts ----------------------------
class _Client(WeChatClient):
    def __init__(self, s: WechatSettings, token: SharedCredential):
        super().__init__(s.app_id, s.app_secret, timeout=s.timeout_s, auto_retry=False)
        self.API_BASE_URL = s.api_base_url.rstrip("/") + "/cgi-bin/"
        self._shared = token

    @property
    def access_token(self):  # type: ignore[override] - the deployment's shared token
        return self._shared.get()

    def fetch_access_token(self):  # pragma: no cover - SharedCredential does this
        raise RuntimeError("the access token is refreshed through SharedCredential")


class _OAuth(WeChatOAuth):
    def __init__(self, s: WechatSettings, state: str = ""):
        super().__init__(s.app_id, s.app_secret, s.oauth_redirect_uri, scope="snsapi_base",
                         state=state)
        self.API_BASE_URL = s.api_base_url.rstrip("/") + "/"
        self.OAUTH_BASE_URL = s.oauth_base_url
        self._timeout = s.timeout_s

    def _request(self, method, url_or_endpoint, **kwargs):
        kwargs.setdefault("timeout", self._timeout)
        return super()._request(method, url_or_endpoint, **kwargs)


def _describe(exc: Exception) -> WechatApiError:
    if isinstance(exc, WechatApiError):
        return exc
    if isinstance(exc, (WeChatClientException, WeChatOAuthException)):
        if exc.errcode is None:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            return WechatApiError(f"WeChat answered HTTP {status}")
        return WechatApiError(f"WeChat error {exc.errcode}: {exc.errmsg}", exc.errcode)
    if isinstance(exc, requests.Timeout):
        return WechatApiError("WeChat did not answer in time (timeout)")
    if isinstance(exc, requests.RequestException):
        return WechatApiError(f"cannot reach WeChat: {type(exc).__name__}")
    if isinstance(exc, ValueError):
        return WechatApiError(f"WeChat's answer was not understood: {exc}")
    return WechatApiError(f"{type(exc).__name__}: {exc}")


@dataclass
class OAuthResult:
    openid: str
    snapshot_user: bool


class WechatService:
    """Everything that talks to WeChat for one configuration (blocking: call it from a
    thread, with a database connection)."""

    def __init__(self, s: WechatSettings, owner: str | None = None):
        self.s = s
        self.owner = owner or process_owner()
        self._http = requests.Session()
        self.token = SharedCredential(s.app_id, "access_token", self._fetch_token,
                                      owner=self.owner, margin_s=s.refresh_margin_s,
                                      timeout_s=s.timeout_s)
        self.ticket = SharedCredential(s.app_id, "jsapi_ticket", self._fetch_ticket,
                                       owner=self.owner, margin_s=s.refresh_margin_s,
                                       timeout_s=s.timeout_s)
        self.client = _Client(s, self.token)

    # tokens -----------------------------------------------------------------------------------
    def _fetch_token(self) -> tuple[str, int]:
        url = self.s.api_base_url.rstrip("/") + "/cgi-bin/token"
        try:
            r = self._http.get(url, params={"grant_type": "client_credential",
                                            "appid": self.s.app_id,
                                            "secret": self.s.app_secret},
                               timeout=self.s.timeout_s)
            if r.status_code != 200:
                raise WechatApiError(f"WeChat answered HTTP {r.status_code} to the token request")
            data = r.json()
        except Exception as exc:  # noqa: BLE001
            raise _describe(exc) from None
        if data.get("errcode"):
            raise WechatApiError(f"WeChat refused the access token: {data.get('errcode')} "
                                 f"{data.get('errmsg', '')}", int(data["errcode"]))
        if not data.get("access_token"):
            raise WechatApiError("WeChat's token answer has no access_token")
        return data["access_token"], int(data.get("expires_in") or 7200)

    def _fetch_ticket(self) -> tuple[str, int]:
        data = self.call(lambda: self.client.jsapi.get_ticket())
        if not data.get("ticket"):
            raise WechatApiError("WeChat's ticket answer has no ticket")
        return data["ticket"], int(data.get("expires_in") or 7200)

    def call(self, fn: Callable[[], dict]) -> dict:
        """Run one cgi-bin call; an invalid/expired token is replaced once and retried."""
        for attempt in (1, 2):
            stale = None
            try:
                return fn()
            except WeChatClientException as exc:
                if exc.errcode in INVALID_TOKEN_CODES and attempt == 1:
                    stale = store.read_credential(self.s.app_id, "access_token").value
                else:
                    raise self._failed(exc) from None
            except WechatApiError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise self._failed(exc) from None
            log.info("WeChat said the access token is no longer valid; replacing it")
            self.token.invalidate(stale)
        raise WechatApiError("unreachable")  # pragma: no cover

    def _failed(self, exc: Exception) -> WechatApiError:
        err = _describe(exc)
        if err.errcode is None:        # network / HTTP trouble: shown on the admin status
            store.note_credential_error(self.s.app_id, "access_token", str(err))
        return err

    def check(self) -> dict:
        """Is it working? A token and one cheap call that needs it."""
        t0 = time.monotonic()
        data = self.call(lambda: self.client.get("getcallbackip"))
        store.note_credential_error(self.s.app_id, "access_token", "")     # working again
        return {"ok": True, "callback_ips": len(data.get("ip_list") or []),
                "ms": round((time.monotonic() - t0) * 1000, 1)}

    # web authorisation ------------------------------------------------------------------------
    def authorize_url(self, state: str) -> str:
        return _OAuth(self.s, state).authorize_url

    def exchange_code(self, code: str) -> OAuthResult:
        if not code or len(code) > 128 or not code.isprintable():
            raise WechatApiError("the authorisation code is missing or not valid")
        try:
            data = _OAuth(self.s).fetch_access_token(code)
        except Exception as exc:  # noqa: BLE001
            raise _describe(exc) from None
        openid = str(data.get("openid") or "")
        if not openid or len(openid) > 64:
            raise WechatApiError("WeChat's answer has no openid")
        return OAuthResult(openid, str(data.get("is_snapshotuser") or "0") == "1")

    # template messages ------------------------------------------------------------------------
    def template_data(self, now: dt.datetime | None = None) -> dict:
        local = (now or utcnow()) + dt.timedelta(hours=8)       # China standard time
        stamp = local.strftime("%Y-%m-%d %H:%M")
        return {k: {"value": v.replace("{time}", stamp)}
                for k, v in parse_template_fields(self.s.template_fields)}

    def send_template(self, openid: str, data: dict, client_msg_id: str) -> int:
        body = {"touser": openid, "template_id": self.s.template_id,
                "url": self.s.my_exams_url, "data": data, "client_msg_id": client_msg_id}
        res = self.call(lambda: self.client.post("message/template/send", data=body))
        return int(res.get("msgid") or 0)

    def deliver_report_ready(self, payload: str, key: str) -> str:
        """The outbox sender's work for one row: returns what happened, raises DeliveryError
        for a failure worth retrying."""
        notice = store.notice_for_send(key)
        if notice is None:
            raise DeliveryError("no notification recorded for this outbox row")
        if notice.state != "queued":
            return notice.state               # accepted before a crash: not sent twice
        if notice.openid is None:
            store.notice_dropped(key, "unbound or notifications off")
            return "dropped"
        if not self.s.notify_enabled:
            store.notice_dropped(key, "notifications switched off")
            return "dropped"
        if not self.s.template_id:
            raise DeliveryError("wechat_template_id is not configured")
        try:
            msgid = self.send_template(notice.openid, self.template_data(),
                                       notice.client_msg_id)
        except WechatApiError as exc:
            if exc.errcode in PERMANENT_SEND_CODES:
                store.notice_dropped(key, PERMANENT_SEND_CODES[exc.errcode])
                return "dropped"
            store.notice_attempt(key, ok=False, detail=str(exc))
            raise DeliveryError(str(exc)) from None
        store.notice_attempt(key, ok=True, msgid=msgid)
        return "accepted"

    # JS-SDK -----------------------------------------------------------------------------------
    def jssdk_config(self, url: str) -> dict:
        ticket = self.ticket.get()
        nonce = secrets.token_hex(8)
        ts = int(time.time())
        return {"appId": self.s.app_id, "timestamp": ts, "nonceStr": nonce,
                "signature": jssdk_signature(ticket, nonce, ts, url)}


def jssdk_signature(ticket: str, noncestr: str, timestamp: int, url: str) -> str:
    url = url.split("#", 1)[0]
    text = f"jsapi_ticket={ticket}&noncestr={noncestr}&timestamp={timestamp}&url={url}"
    # SHA-1 is what WeChat's JS-SDK protocol prescribes (not our choice of hash)
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()


# the message callback -----------------------------------------------------------------------
def signature(token: str, *parts: str) -> str:
    """WeChat's callback signature: SHA-1 of the sorted, joined parts (its protocol)."""
    return hashlib.sha1("".join(sorted([token, *parts])).encode("utf-8"),
                        usedforsecurity=False).hexdigest()


def signature_ok(token: str, given: str | None, *parts: str) -> bool:
    return hmac.compare_digest(signature(token, *parts).encode(), (given or "").encode()[:64])


@dataclass
class InboundMessage:
    message: object               # a wechatpy message or event
    encrypted: bool
    timestamp: str
    nonce: str
    key: str                      # de-duplication key (MsgId, or the event's identity)


def check_callback_query(s: WechatSettings, args: dict, now: float | None = None
                         ) -> tuple[str, str]:
    """Signature (constant time) and replay window of a callback request's query."""
    ts, nonce = args.get("timestamp", ""), args.get("nonce", "")
    if not ts.isdigit() or not nonce or len(nonce) > 64 or len(ts) > 12:
        raise CallbackRefused(400, "timestamp or nonce missing")
    if not signature_ok(s.token, args.get("signature"), ts, nonce):
        raise CallbackRefused(403, "signature does not match")
    skew = abs((now or time.time()) - int(ts))
    if skew > s.replay_window_s:
        raise CallbackRefused(403, f"timestamp outside the replay window ({int(skew)} s)")
    return ts, nonce


def _xml_fields(body: bytes) -> dict:
    try:
        root = SafeET.fromstring(body)
    except Exception:  # noqa: BLE001 - defusedxml refuses DTDs and entities too
        raise CallbackRefused(400, "the body is not valid XML") from None
    return {child.tag: (child.text or "") for child in root}


def open_callback(s: WechatSettings, args: dict, body: bytes,
                  now: float | None = None) -> InboundMessage:
    """Check and open one pushed message (plain or safe mode)."""
    ts, nonce = check_callback_query(s, args, now)
    if len(body) > 64 * 1024:
        raise CallbackRefused(413, "message too large")
    encrypted = args.get("encrypt_type") == "aes"
    if encrypted:
        outer = _xml_fields(body)
        enc = outer.get("Encrypt", "")
        if not enc:
            raise CallbackRefused(400, "Encrypt missing")
        if not signature_ok(s.token, args.get("msg_signature"), ts, nonce, enc):
            raise CallbackRefused(403, "msg_signature does not match")
        try:
            xml = PrpCrypto(WeChatCrypto(s.token, s.aes_key, s.app_id).key).decrypt(
                enc, s.app_id)
        except Exception:  # noqa: BLE001 - wrong key, wrong AppID, bad padding
            raise CallbackRefused(400, "the message cannot be decrypted with our key and AppID") \
                from None
        xml = xml if isinstance(xml, bytes) else str(xml).encode("utf-8")
    else:
        if s.message_mode == "safe":
            raise CallbackRefused(400, "plain-text messages are refused in safe mode")
        xml = body
    fields = _xml_fields(xml)
    if not fields.get("MsgType"):
        raise CallbackRefused(400, "MsgType missing")
    try:
        msg = parse_message(xml.decode("utf-8"))
    except Exception:  # noqa: BLE001
        raise CallbackRefused(400, "the message cannot be parsed") from None
    if fields.get("MsgId"):
        key = "msg:" + fields["MsgId"][:64]
    elif fields.get("Event", "").upper() == "TEMPLATESENDJOBFINISH":
        key = "tpl:" + fields.get("MsgID", "")[:40] + ":" + hashlib.sha256(
            fields.get("Status", "").encode()).hexdigest()[:8]
    else:
        ident = "|".join([fields.get("FromUserName", ""), fields.get("CreateTime", ""),
                          fields.get("Event", ""), fields.get("EventKey", "")])
        key = "ev:" + hashlib.sha256(ident.encode()).hexdigest()[:48]
    return InboundMessage(msg, encrypted, ts, nonce, key)


def render_reply(s: WechatSettings, inbound: InboundMessage, text: str | None) -> str:
    """The passive reply: text (encrypted when the message was) or 'success' (nothing)."""
    if not text:
        return "success"
    xml = TextReply(message=inbound.message, content=text).render()
    if inbound.encrypted:
        return WeChatCrypto(s.token, s.aes_key, s.app_id).encrypt_message(
            xml, inbound.nonce, inbound.timestamp)
    return xml


KEYWORDS = ("报告", "胶片", "影像", "检查", "report", "film")


def reply_for(s: WechatSettings, msg) -> str | None:
    """What we answer: the link for a subscribe, a menu click or a keyword; None otherwise."""
    link = s.my_exams_url
    text = s.reply_text.replace("{link}", link) if "{link}" in s.reply_text \
        else f"{s.reply_text} {link}"
    mtype = getattr(msg, "type", "")
    if mtype == "event":
        ev = getattr(msg, "event", "")
        if ev in ("subscribe", "subscribe_scan", "scan"):
            return text
        if ev == "click" and str(getattr(msg, "key", "")).lower().startswith("cloudfilm"):
            return text
        return None
    if mtype == "text":
        content = str(getattr(msg, "content", "")).strip().lower()
        if any(k in content for k in KEYWORDS):
            return text
        return "回复“报告”或“胶片”获取查看链接 / reply 报告 or 胶片 for the link to your exams"
    return None


# the outbox sender ------------------------------------------------------------------------------
def make_sender(get_service: Callable[[], "WechatService | None"], run_in_db: Callable):
    """An outbox sender for the 'wechat' channel. get_service() returns the service of the
    current configuration (None when WeChat is off); run_in_db runs a blocking function in
    a thread with a database connection."""
    async def send(destination: str, payload: str, key: str) -> None:
        svc = get_service()
        if svc is None:
            raise DeliveryError("WeChat is not configured (AppID, secret, token, AES key)")
        data = json.loads(payload)
        if data.get("kind") != "report_ready":
            raise DeliveryError(f"unknown WeChat payload kind {data.get('kind')!r}")
        await run_in_db(svc.deliver_report_ready, payload, key)
    return send
