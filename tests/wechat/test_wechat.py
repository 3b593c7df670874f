"""WeChat Official Account against a fake WeChat server that speaks the real wire format:
web authorisation, binding, the message callback (signatures, replay, duplicates, safe
mode), report-ready template messages through the outbox, the shared access token, JS-SDK
and the admin status."""
from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import time

import pytest

from models.db import database, write_transaction
from models.schema import AuditEvent, Exam, Outbox, Patient
from models.wechat import WechatBinding, WechatInbound, WechatNotification

from .conftest import (A, B, TOKEN, WECHAT_UA, api, arrive_from_menu, configure, event_xml,
                       open_reply, phone_session, push, sign, text_xml)

pytestmark = pytest.mark.db


def bind(wlive, sess, person):
    me = api(wlive, sess, "GET", "/api/wechat/me").json()
    r = api(wlive, sess, "POST", "/api/wechat/bind",
            {"phone": person.phone, "id_number": person.id_number}, csrf=me["csrf_token"])
    assert r.status_code == 200, r.text
    return r.json()


def drain(rounds=10):
    """Run the outbox worker until nothing is due (backoff 0 so retries are due at once)."""
    from adapters.outbox import OutboxSettings, OutboxWorker

    async def go():
        w = OutboxWorker(OutboxSettings(max_attempts=10, backoff_s=0, backoff_max_s=0))
        for _ in range(rounds):
            if await w.run_once() == 0:
                break
        return w
    return asyncio.run(go())


def test_everything_off_until_configured(ctx, people, tmp_path, fake):
    from tests.conftest import LiveServer
    s = LiveServer(ctx)
    try:
        sess = phone_session()
        r = sess.get(s.url + "/wechat/oauth/start", allow_redirects=False)
        assert r.status_code == 302 and r.headers["Location"].endswith("/portal")
        assert sess.get(s.url + "/wechat/callback?timestamp=1&nonce=1&signature=x"
                        ).status_code == 404
        assert sess.post(s.url + "/wechat/callback", data=b"<xml/>").status_code == 404
        assert sess.get(s.url + "/api/wechat/jssdk?url=x").status_code == 404
        me = sess.get(s.url + "/api/wechat/me").json()
        assert me["configured"] is False and me["visit"] is False
        # inside WeChat but not configured: the page still works (portal verification)
        r = sess.get(s.url + "/wechat/", allow_redirects=False)
        assert r.status_code == 200 and b"wechat.js" in r.content
        from server import wechat_service as wx
        with database.connection_context():
            st = wx.status(ctx)
        assert st["configured"] is False and st["working"] is False
        assert "wechat_app_id is not set" in st["problems"]
        assert fake.requests == []                 # nothing was sent to WeChat
        configure(ctx, fake, tmp_path, wechat_aes_key_file="")
        assert wx.wechat_settings(ctx) is None      # still off: the AES key is missing
        configure(ctx, fake, tmp_path)
        assert wx.wechat_settings(ctx) is not None
    finally:
        s.stop()


def test_oauth_round_trip_binding_and_my_exams(wlive, people, fake):
    sess = phone_session()
    r = arrive_from_menu(wlive, sess)
    # silent authorisation: /wechat/ → fake authorize → our callback → bind form
    hops = [h.url.split("?")[0] for h in r.history]
    assert hops[0].endswith("/wechat/") and any("/connect/oauth2/authorize" in h for h in hops)
    assert any(h.endswith("/wechat/oauth/callback") for h in hops)
    assert r.status_code == 200 and r.url.endswith("/wechat/#bind")
    me = api(wlive, sess, "GET", "/api/wechat/me").json()
    assert me["visit"] is True and me["bindings"] == [] and me["signed_in"] is False
    assert api(wlive, sess, "GET", "/api/patient/me").status_code == 401

    # a wrong combination binds nothing
    bad = api(wlive, sess, "POST", "/api/wechat/bind",
              {"phone": A.phone, "id_number": B.id_number})
    assert bad.status_code == 403
    bind(wlive, sess, A)
    pm = api(wlive, sess, "GET", "/api/patient/me").json()
    assert [e["study_uid"] for e in pm["exams"]] == [A.study_uid]
    assert api(wlive, sess, "GET", f"/api/studies/{A.study_uid}").status_code == 200
    assert api(wlive, sess, "GET", f"/api/studies/{B.study_uid}").status_code == 404

    # another day, same WeChat user: straight to "my exams", no verification
    later = phone_session()
    r = arrive_from_menu(wlive, later)
    assert r.status_code == 200 and r.url.split("#")[0].endswith("/wechat/")
    pm = api(wlive, later, "GET", "/api/patient/me").json()
    assert [e["study_uid"] for e in pm["exams"]] == [A.study_uid]
    film = later.get(wlive.url + f"/film/{A.study_uid}")
    assert film.status_code == 200
    csrf = api(wlive, later, "GET", "/api/wechat/me").json()["csrf_token"]

    # a parent binds a second patient (a child) with one more verification, and switches
    r = api(wlive, later, "POST", "/api/wechat/bind",
            {"phone": B.phone, "id_number": B.id_number}, csrf=csrf)
    assert r.status_code == 200
    csrf = r.json()["csrf_token"]
    me = api(wlive, later, "GET", "/api/wechat/me").json()
    assert len(me["bindings"]) == 2
    assert [b["current"] for b in me["bindings"]].count(True) == 1
    assert all("*" in b["name"] for b in me["bindings"])          # masked names
    b_of = {b["current"]: b for b in me["bindings"]}
    other = b_of[False]["id"]
    r = api(wlive, later, "POST", "/api/wechat/switch", {"binding_id": other}, csrf=csrf)
    assert r.status_code == 200
    csrf = r.json()["csrf_token"]
    pm = api(wlive, later, "GET", "/api/patient/me").json()
    assert [e["study_uid"] for e in pm["exams"]] == [A.study_uid]
    # unbind the current one: its session ends; the other binding stays
    r = api(wlive, later, "POST", "/api/wechat/unbind", {"binding_id": other}, csrf=csrf)
    assert r.status_code == 200 and r.json()["signed_out"] is True
    assert api(wlive, later, "GET", "/api/patient/me").status_code == 401
    me = api(wlive, later, "GET", "/api/wechat/me").json()
    assert len(me["bindings"]) == 1
    # someone else's binding id cannot be used
    stranger = phone_session()
    fake.current_openid = "oFAKE_openid_stranger_9999"
    arrive_from_menu(wlive, stranger)
    r = api(wlive, stranger, "POST", "/api/wechat/switch", {"binding_id": me["bindings"][0]["id"]})
    assert r.status_code == 404
    # the openid is never written to the audit trail
    with database.connection_context():
        texts = [f"{e.actor_id} {e.object_id} {e.detail}" for e in AuditEvent.select()]
        assert any("wechat.bind" == e.action for e in AuditEvent.select())
    assert not any("oFAKE" in t for t in texts)


def test_state_mismatch_refused(wlive, people, fake):
    sess = phone_session()
    r = sess.get(wlive.url + "/wechat/oauth/start", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].startswith(fake.oauth_base)
    assert "scope=snsapi_base" in r.headers["Location"]
    # WeChat comes back with a code but a forged state
    auth = sess.get(r.headers["Location"].split("#")[0], allow_redirects=False)
    back = auth.headers["Location"]
    forged = back.rsplit("state=", 1)[0] + "state=forged"
    r = sess.get(forged, allow_redirects=False)
    assert r.status_code == 403 and "cf_wx" not in sess.cookies
    # a callback in a browser that never started the authorisation (login CSRF)
    other = phone_session()
    r = other.get(back, allow_redirects=False)
    assert r.status_code == 403 and "cf_wx" not in other.cookies
    with database.connection_context():
        fails = [e.detail for e in AuditEvent.select().where(AuditEvent.action == "wechat.oauth")]
    assert fails.count("state mismatch") == 2


def test_snapshot_user_refused(wlive, people, fake):
    fake.snapshot = True
    sess = phone_session()
    r = arrive_from_menu(wlive, sess)
    assert r.status_code == 403 and "使用完整服务" in r.text
    assert "cf_wx" not in sess.cookies and "cf_session" not in sess.cookies
    assert api(wlive, sess, "GET", "/api/wechat/me").json()["visit"] is False


def test_callback_url_verification(wlive):
    ts, nonce = str(int(time.time())), "n0nce"
    q = {"timestamp": ts, "nonce": nonce, "signature": sign(TOKEN, ts, nonce),
         "echostr": "1234567890"}
    import requests
    r = requests.get(wlive.url + "/wechat/callback", params=q)
    assert r.status_code == 200 and r.text == "1234567890"
    q["signature"] = sign("wrong-token", ts, nonce)
    assert requests.get(wlive.url + "/wechat/callback", params=q).status_code == 403


def test_forged_signature_refused(wlive):
    xml = text_xml("报告", "9000001")
    r = push(wlive, xml, token="NotOurToken")                # both signatures forged
    assert r.status_code == 403
    r = push(wlive, xml, tamper=lambda q: q.update(msg_signature="0" * 40))
    assert r.status_code == 403
    # change the last hex digit (to a different one: "0" could be what it already was)
    r = push(wlive, xml, tamper=lambda q: q.update(
        signature=q["signature"][:-1] + ("1" if q["signature"][-1] == "0" else "0")))
    assert r.status_code == 403
    r = push(wlive, xml, encrypt=False)                     # plain text in safe mode
    assert r.status_code == 400
    with database.connection_context():
        assert WechatInbound.select().count() == 0


def test_replayed_message_refused(wlive):
    old = int(time.time()) - 3600
    r = push(wlive, text_xml("报告", "9000002"), timestamp=old)
    assert r.status_code == 403                             # outside the replay window
    ts = int(time.time())
    first = push(wlive, text_xml("胶片", "9000003"), timestamp=ts, nonce="fixednonce")
    assert first.status_code == 200 and "/wechat/" in open_reply(first)
    # the same nonce carrying another message: a replay with a spliced body
    r = push(wlive, text_xml("报告", "9000004"), timestamp=ts, nonce="fixednonce")
    assert r.status_code == 403
    with database.connection_context():
        assert [m.msg_key for m in WechatInbound.select()] == ["msg:9000003"]


def test_duplicate_msgid_ignored_and_replies(wlive):
    a = push(wlive, text_xml("我的报告", "9000010"))
    b = push(wlive, text_xml("我的报告", "9000010"))           # WeChat's retry: new nonce
    c = push(wlive, text_xml("我的报告", "9000010"))
    assert a.status_code == b.status_code == c.status_code == 200
    link = wlive.url + "/wechat/"
    assert link in open_reply(a) and open_reply(b) == open_reply(a) == open_reply(c)
    with database.connection_context():
        assert WechatInbound.select().where(WechatInbound.msg_key == "msg:9000010").count() == 1
    # subscribe event and keyword replies carry the link; other text gets the hint
    assert link in open_reply(push(wlive, event_xml("subscribe", EventKey="")))
    assert link in open_reply(push(wlive, text_xml("看胶片", "9000011")))
    hint = open_reply(push(wlive, text_xml("你好", "9000012")))
    assert "报告" in hint and link not in hint
    # compatible mode also accepts plain text; the reply is plain XML then
    wlive.ctx.config.set_base(wechat_message_mode="compatible")
    r = push(wlive, text_xml("报告", "9000013"), encrypt=False)
    assert r.status_code == 200 and link in r.text and "<Encrypt>" not in r.text


def test_callback_answers_within_five_seconds(wlive):
    t0 = time.monotonic()
    for i in range(5):
        assert push(wlive, text_xml("报告", f"91{i}")).status_code == 200
    assert (time.monotonic() - t0) / 5 < 1.0


def _bound(wlive, person):
    sess = phone_session()
    arrive_from_menu(wlive, sess)
    bind(wlive, sess, person)
    return sess


def test_report_ready_fails_twice_then_exactly_one(wlive, people, fake, catalog):
    _bound(wlive, A)
    fake.fail("/cgi-bin/message/template/send", "http500", "busy")
    with database.connection_context():
        exam = Exam.get(Exam.study_uid == A.study_uid)
        catalog.store_report(exam, findings="右肺上叶结节，建议复查。", impression="肺结节。",
                             status="final")
        rows = list(Outbox.select().where(Outbox.channel == "wechat"))
        assert len(rows) == 1 and rows[0].status == "pending"
        # the same final report filed again (a retransmission) queues nothing new
        catalog.store_report(exam, findings="右肺上叶结节，建议复查。", impression="肺结节。",
                             status="final")
        assert Outbox.select().where(Outbox.channel == "wechat").count() == 1
        w = drain()
        row = Outbox.get_by_id(rows[0].id)
    assert row.status == "sent" and row.attempts == 3 and w.failed == 2
    assert fake.requests.count("POST /cgi-bin/message/template/send") == 3
    assert fake.send_calls == 1 and len(fake.sent) == 1
    sent = fake.sent[0]
    assert sent["touser"] == fake.current_openid and sent["template_id"] == "TPL_report_ready_01"
    assert sent["url"] == wlive.url + "/wechat/"
    text = json.dumps(sent, ensure_ascii=False)
    for medical in ("结节", "肺", A.accession, A.study_uid, A.patient_id, "CT", "Test"):
        assert medical not in text, medical
    assert sent["client_msg_id"].startswith("cf")
    with database.connection_context():
        n = WechatNotification.get()
    assert n.state == "accepted" and n.msgid == sent["msgid"] and n.attempts == 3
    # WeChat reports the delivery
    r = push(wlive, event_xml("TEMPLATESENDJOBFINISH", MsgID=sent["msgid"], Status="success"))
    assert r.status_code == 200 and r.text == "success"
    with database.connection_context():
        assert WechatNotification.get().state == "delivered"
    # a resend of the same message (e.g. after a crash) is de-duplicated by client_msg_id
    from wechatpy import WeChatClient  # noqa: F401 - wire format check below uses raw JSON
    import requests
    tok = next(iter(fake.tokens))
    again = requests.post(fake.url + "/cgi-bin/message/template/send",
                          params={"access_token": tok}, data=json.dumps(sent))
    assert again.json()["msgid"] == sent["msgid"] and len(fake.sent) == 1


def test_timeout_then_success_and_corrected_report(wlive, people, fake, catalog):
    _bound(wlive, A)
    fake.fail("/cgi-bin/message/template/send", "timeout")
    t0 = time.monotonic()
    with database.connection_context():
        exam = Exam.get(Exam.study_uid == A.study_uid)
        catalog.store_report(exam, findings="a", impression="b", status="final")
        drain()
        assert time.monotonic() - t0 < 3.4                 # wechat_timeout_s = 1
        assert Outbox.get(Outbox.channel == "wechat").status == "sent"
        catalog.store_report(exam, findings="a2", impression="b", status="corrected")
        drain()
    assert len(fake.sent) == 2 and fake.sent[0]["client_msg_id"] != fake.sent[1]["client_msg_id"]


def test_hl7_oru_path_queues_in_same_transaction(wlive, people, fake, catalog):
    from models.integration import ReportFields, file_report
    _bound(wlive, B)
    with database.connection_context():
        exam = Exam.get(Exam.study_uid == B.study_uid)
        try:
            with write_transaction():
                file_report(catalog, exam, ReportFields(findings="x", impression="y"))
                assert Outbox.select().where(Outbox.channel == "wechat").count() == 1
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        assert Outbox.select().where(Outbox.channel == "wechat").count() == 0
        assert WechatNotification.select().count() == 0
        with write_transaction():
            file_report(catalog, exam, ReportFields(findings="x", impression="y"))
        drain()
    assert len(fake.sent) == 1


def test_unbound_or_unnotified_patients_get_nothing(wlive, people, fake, catalog):
    sess = _bound(wlive, A)
    me = api(wlive, sess, "GET", "/api/wechat/me").json()
    with database.connection_context():
        exam_b = Exam.get(Exam.study_uid == B.study_uid)
        catalog.store_report(exam_b, findings="x", status="final")      # B is not bound
        assert Outbox.select().where(Outbox.channel == "wechat").count() == 0
        exam_a = Exam.get(Exam.study_uid == A.study_uid)
        catalog.store_report(exam_a, findings="x", status="final")
    # unbound before the worker ran: dropped, nothing sent
    r = api(wlive, sess, "POST", "/api/wechat/unbind", {"binding_id": me["bindings"][0]["id"]},
            csrf=me["csrf_token"])
    assert r.status_code == 200
    with database.connection_context():
        drain()
        assert WechatNotification.get().state == "dropped"
        assert Outbox.get(Outbox.channel == "wechat").status == "sent"
    assert fake.sent == []


def test_invalid_token_replaced_once(wlive, people, fake, catalog):
    _bound(wlive, A)
    from server import wechat_service as wx
    with database.connection_context():
        assert wx.check_now(wlive.ctx)["ok"] is True
        assert fake.token_calls == 1
        fake.invalidate_tokens()                             # e.g. the secret was reset
        exam = Exam.get(Exam.study_uid == A.study_uid)
        catalog.store_report(exam, findings="x", status="final")
        drain()
    assert len(fake.sent) == 1 and fake.token_calls == 2


def test_jssdk_signature(wlive, people, fake):
    sess = _bound(wlive, A)
    page = wlive.url + "/wechat/"
    r = api(wlive, sess, "GET", f"/api/wechat/jssdk?url={page}")
    assert r.status_code == 200, r.text
    cfg = r.json()
    from models.wechat import read_credential
    with database.connection_context():
        ticket = read_credential(cfg["appId"], "jsapi_ticket").value
    plain = (f"jsapi_ticket={ticket}&noncestr={cfg['nonceStr']}&timestamp={cfg['timestamp']}"
             f"&url={page}")
    assert cfg["signature"] == hashlib.sha1(plain.encode()).hexdigest()
    assert "updateAppMessageShareData" in cfg["jsApiList"]
    r2 = api(wlive, sess, "GET", f"/api/wechat/jssdk?url={page}%23frag")
    assert r2.status_code == 200 and fake.ticket_calls == 1          # ticket shared
    assert api(wlive, sess, "GET", "/api/wechat/jssdk?url=https://evil.example/").status_code \
        == 400
    import requests
    assert requests.get(wlive.url + f"/api/wechat/jssdk?url={page}").status_code == 401
    # a share's code page (no patient data) is signed without the web authorisation, so its
    # share card works for whoever the link was forwarded to
    share_page = wlive.url + "/s/" + "A" * 32
    r = requests.get(wlive.url + f"/api/wechat/jssdk?url={share_page}")
    assert r.status_code == 200 and r.json()["signature"]
    r = requests.get(wlive.url + f"/api/wechat/jssdk?url={share_page}/x")
    assert r.status_code == 401


def test_admin_status_configured_and_working(wlive, people, fake):
    from tests.conftest import staff_headers
    hdr = staff_headers("wxadmin", ("sysadmin",))        # admins sign in; no API token
    st, _, body = wlive.request("GET", "/api/admin/wechat", headers=hdr, auth=False)
    s = json.loads(body)
    assert st == 200 and s["configured"] is True and s["working"] is False
    assert s["callback_url"] == wlive.url + "/wechat/callback"
    assert "secret" not in body.decode().lower().replace("app_secret_file", "")
    st, _, body = wlive.request("POST", "/api/admin/wechat/check", body={}, headers=hdr,
                                auth=False)
    out = json.loads(body)
    assert out["check"]["ok"] is True and out["status"]["working"] is True
    assert out["status"]["access_token"]["expires_in_s"] > 7000
    fake.fail("/cgi-bin/getcallbackip", "http500")
    st, _, body = wlive.request("POST", "/api/admin/wechat/check", body={}, headers=hdr,
                                auth=False)
    out = json.loads(body)
    assert out["check"]["ok"] is False and "HTTP 500" in out["check"]["error"]
    assert out["status"]["working"] is False, out["status"].get("access_token")
    assert "HTTP 500" in out["status"]["access_token"]["last_error"]
    st, _, _ = wlive.request("GET", "/api/admin/wechat")              # a doctor
    assert st == 403


def test_access_token_refreshed_before_expiry(ctx, fake, tmp_path):
    configure(ctx, fake, tmp_path)
    from server import wechat_service as wx
    from models.wechat import WechatCredential
    with database.connection_context():
        svc = wx.service(ctx)
        first = svc.token.get()
        assert svc.token.refresh_if_due() is False                  # 2 h left
        row = WechatCredential.get(WechatCredential.kind == "access_token")
        WechatCredential.update(expires_at=row.expires_at - datetime.timedelta(
            seconds=7200 - 600)).where(WechatCredential.id == row.id).execute()
        assert svc.token.get() == first                             # usable, not yet refreshed
        assert svc.token.refresh_if_due() is True                    # within the margin
        assert svc.token.get() != first and fake.token_calls == 2


def test_background_refresher_and_outbox_channel(ctx, fake, tmp_path):
    """serve starts wechat_service.start_background: the 'wechat' channel is registered and
    the primary process fetches the shared token ahead of any request."""
    configure(ctx, fake, tmp_path)
    from adapters import outbox
    from server import wechat_service as wx

    async def go():
        await wx.start_background(ctx, True)
        for _ in range(100):
            if fake.token_calls:
                break
            await asyncio.sleep(0.05)
        await wx.stop_background()
    outbox.SENDERS.pop("wechat", None)
    asyncio.run(go())
    assert "wechat" in outbox.SENDERS and fake.token_calls == 1
    with database.connection_context():
        st = wx.status(ctx)
    assert st["working"] is True and st["warnings"] == []
