"""WeChat test fixtures: a fake WeChat server, the secret files, a live CloudFilm server
configured against the fake, two patients with exams (tests/access), and helpers that sign
and encrypt callback messages the way WeChat does."""
from __future__ import annotations

import base64
import hashlib
import secrets
import time

import pytest
import requests

from tests.access.conftest import A, B, people  # noqa: F401 - fixture re-exported
from tests.conftest import LiveServer, staff_token

from .fake_wechat import APP_ID, APP_SECRET, FakeWechat

TOKEN = "CloudFilmToken2026"
AES_KEY = base64.b64encode(b"0123456789abcdef0123456789ABCDEF").decode().rstrip("=")
WECHAT_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
             "(KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.50(0x1800322d) "
             "NetType/WIFI Language/zh_CN")


@pytest.fixture
def fake():
    f = FakeWechat()
    yield f
    f.stop()


def configure(ctx, fake, tmp_path, **extra) -> None:
    d = tmp_path / "wechat-secrets"
    d.mkdir(exist_ok=True)
    (d / "secret").write_text(APP_SECRET + "\n")
    (d / "token").write_text(TOKEN + "\n")
    (d / "aes").write_text(AES_KEY + "\n")
    ctx.config.set_base(**{
        "wechat_app_id": APP_ID, "wechat_app_secret_file": str(d / "secret"),
        "wechat_callback_token_file": str(d / "token"), "wechat_aes_key_file": str(d / "aes"),
        "wechat_api_base_url": fake.api_base, "wechat_oauth_base_url": fake.oauth_base,
        "wechat_timeout_s": 1, "wechat_template_id": "TPL_report_ready_01", **extra})


@pytest.fixture
def wlive(ctx, fake, tmp_path):
    configure(ctx, fake, tmp_path)
    s = LiveServer(ctx)
    s.token = staff_token()
    ctx.config.set_base(public_url=s.url)
    yield s
    s.stop()


def phone_session() -> requests.Session:
    s = requests.Session()
    s.headers["User-Agent"] = WECHAT_UA
    return s


def arrive_from_menu(live, sess: requests.Session) -> requests.Response:
    """Open the menu URL inside 'WeChat': /wechat/ → authorisation → callback → page."""
    return sess.get(live.url + "/wechat/", timeout=20)


def api(live, sess, method, path, body=None, csrf=None):
    headers = {"Accept": "application/json"}
    if csrf:
        headers["X-CSRF-Token"] = csrf
    return sess.request(method, live.url + path, json=body, headers=headers, timeout=20)


# WeChat's callback signing ------------------------------------------------------------------------
def sign(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def text_xml(content: str, msg_id: str, openid="oFAKE_openid_patient_0001") -> str:
    return (f"<xml><ToUserName><![CDATA[gh_hospital]]></ToUserName>"
            f"<FromUserName><![CDATA[{openid}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>")


def event_xml(event: str, openid="oFAKE_openid_patient_0001", **fields) -> str:
    extra = "".join(f"<{k}><![CDATA[{v}]]></{k}>" if isinstance(v, str) else f"<{k}>{v}</{k}>"
                    for k, v in fields.items())
    return (f"<xml><ToUserName><![CDATA[gh_hospital]]></ToUserName>"
            f"<FromUserName><![CDATA[{openid}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
            f"<Event><![CDATA[{event}]]></Event>{extra}</xml>")


def push(live, xml: str, *, encrypt=True, timestamp=None, nonce=None, token=TOKEN,
         tamper=None) -> requests.Response:
    """POST a message as WeChat does (safe mode: encrypted, msg_signature)."""
    from wechatpy.crypto import WeChatCrypto
    ts = str(timestamp if timestamp is not None else int(time.time()))
    nonce = nonce or secrets.token_hex(5)
    q = {"timestamp": ts, "nonce": nonce, "signature": sign(token, ts, nonce),
         "openid": "oFAKE_openid_patient_0001"}
    if encrypt:
        body = WeChatCrypto(TOKEN, AES_KEY, APP_ID).encrypt_message(xml, nonce, ts)
        import re
        enc = re.search(r"<Encrypt><!\[CDATA\[(.*?)\]\]></Encrypt>", body).group(1)
        q.update(encrypt_type="aes", msg_signature=sign(token, ts, nonce, enc))
        body = f"<xml><ToUserName><![CDATA[gh_hospital]]></ToUserName><Encrypt><![CDATA[{enc}]]></Encrypt></xml>"
    else:
        body = xml
    if tamper:
        tamper(q)
    return requests.post(live.url + "/wechat/callback", params=q, data=body.encode("utf-8"),
                         headers={"Content-Type": "text/xml"}, timeout=10)


def open_reply(resp: requests.Response, nonce_ts=None) -> str:
    """Decrypt an encrypted passive reply and return its Content."""
    import re

    from wechatpy.crypto import WeChatCrypto
    text = resp.text
    if text == "success" or not text:
        return ""
    enc = re.search(r"<Encrypt><!\[CDATA\[(.*?)\]\]></Encrypt>", text).group(1)
    sig = re.search(r"<MsgSignature><!\[CDATA\[(.*?)\]\]></MsgSignature>", text).group(1)
    ts = re.search(r"<TimeStamp>(.*?)</TimeStamp>", text).group(1)
    nonce = re.search(r"<Nonce><!\[CDATA\[(.*?)\]\]></Nonce>", text).group(1)
    assert sign(TOKEN, ts, nonce, enc) == sig
    xml = WeChatCrypto(TOKEN, AES_KEY, APP_ID).decrypt_message(text, sig, ts, nonce)
    return re.search(r"<Content><!\[CDATA\[(.*?)\]\]></Content>", xml, re.S).group(1)
