"""Behind a reverse proxy (issue 14 item 5): the client's address and scheme come from the
forwarded headers only when the direct peer is in trusted_proxies (server/proxies.py), through a
REAL nginx running the shipped conf/nginx/cloudfilm.conf; per-address limits never lock out the
patients behind one hospital address because of one share's (or one attacker's) failures.

Clients get their own loopback addresses (127.0.0.5, 127.0.0.6: Linux routes all of 127/8 to
lo), so nginx sees different clients while it reaches CloudFilm from 127.0.0.1."""
import http.client
import json
import ssl
import subprocess
import time

import pytest
import requests

from models.schema import AuditEvent, Share
from server import proxies
from tests.access import conftest as access
from tests.access.conftest import create_share
from tests.conftest import staff_headers
from tests.security.test_nginx import NGINX, _free_port, _need_nginx, _prepare

X, Y, Z = "127.0.0.5", "127.0.0.6", "127.0.0.7"
people = access.people          # the two imported patients (fixture)


class Nginx:
    """nginx with the shipped site config in front of the live server; `call` speaks HTTPS
    to it from a chosen client address."""

    def __init__(self, live, tmp_path):
        _need_nginx()
        self.port = _free_port()
        cert = _prepare(tmp_path, live.port, _free_port(), self.port)
        self.tls = ssl.create_default_context(cafile=str(cert))
        self.proc = subprocess.Popen([NGINX, "-c", str(tmp_path / "nginx.conf"), "-p",
                                      str(tmp_path), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 20
        while True:
            try:
                if self.call("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.2)

    def call(self, method, path, body=None, headers=None, source=X):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.tls,
                                           timeout=30, source_address=(source, 0))
        headers = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            return r.status, r.getheaders(), r.read()
        finally:
            conn.close()

    def open_share(self, token, code, source=X, headers=None):
        return self.call("POST", "/api/share/open", {"token": token, "code": code},
                         headers=headers, source=source)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def nginx(live, tmp_path):
    n = Nginx(live, tmp_path)
    yield n
    n.stop()


def _trust(live, value):
    live.ctx.config.set_base(trusted_proxies=value)


def _last_ip(action="share.open"):
    ev = (AuditEvent.select().where(AuditEvent.action == action)
          .order_by(AuditEvent.id.desc()).first())
    return ev.ip


def _headers(pairs, name):
    return [v for k, v in pairs if k.lower() == name.lower()]


# the parsing rules, without a network ----------------------------------------------------------
class _H(dict):
    def get_list(self, name):
        v = self.get(name)
        return [v] if v is not None else []


def test_forwarded_client_rules():
    nets = proxies.parse_networks("127.0.0.1/32, 10.1.0.0/16")
    xff = {"X-Forwarded-For": "203.0.113.9, 198.51.100.7, 10.1.2.3"}
    # right-most address that is not a trusted proxy; the client's own (spoofed) entry on the
    # left is never taken
    assert proxies.forwarded_client("127.0.0.1", _H(xff), nets) == "198.51.100.7"
    assert proxies.forwarded_client("192.168.1.9", _H(xff), nets) is None     # untrusted peer
    assert proxies.forwarded_client("127.0.0.1", _H(xff), ()) is None          # none trusted
    assert proxies.forwarded_client("127.0.0.1", _H({"X-Real-IP": "198.51.100.8"}),
                                    nets) == "198.51.100.8"
    assert proxies.forwarded_client("127.0.0.1", _H({"X-Forwarded-For": "junk"}), nets) is None
    assert proxies.forwarded_proto("127.0.0.1", _H({"X-Forwarded-Proto": "https"}),
                                   nets) == "https"
    assert proxies.forwarded_proto("192.168.1.9", _H({"X-Forwarded-Proto": "https"}),
                                   nets) is None
    with pytest.raises(ValueError):
        proxies.parse_networks("127.0.0.1/32, not-a-net")


def test_bad_trusted_proxies_setting_stops_start_up(tmp_path):
    from server.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_config(path=tmp_path / "none.toml", env={},
                    overrides={"trusted_proxies": "127.0.0.1/32,nginx"})


# direct requests (no proxy) --------------------------------------------------------------------
@pytest.mark.db
def test_direct_spoofed_forwarded_headers_are_ignored(live, people):
    a, _ = people
    token, code, _ = create_share(live, a.study_uid)
    spoof = {"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9",
             "X-Forwarded-Proto": "https"}
    for trusted in ("", "10.0.0.0/8"):            # none, or a proxy that is not this peer
        _trust(live, trusted)
        r = requests.post(live.url + "/api/share/open", json={"token": token, "code": "000000"
                                                              if code != "000000" else "111111"},
                          headers=spoof, timeout=30)
        assert r.status_code == 403
        assert _last_ip() == "127.0.0.1"
    r = requests.post(live.url + "/api/share/open", json={"token": token, "code": code},
                      headers=spoof, timeout=30)
    assert r.status_code == 200
    assert "Strict-Transport-Security" not in r.headers      # plain HTTP stays plain HTTP
    assert "secure" not in r.headers["Set-Cookie"].lower()
    assert _last_ip() == "127.0.0.1"


@pytest.mark.db
def test_trusted_peer_forwarded_proto_gives_hsts_and_secure_cookie(live, people):
    a, _ = people
    token, code, _ = create_share(live, a.study_uid)
    _trust(live, "127.0.0.1/32")
    r = requests.post(live.url + "/api/share/open", json={"token": token, "code": code},
                      headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"},
                      timeout=30)
    assert r.status_code == 200
    assert r.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert "; secure" in r.headers["Set-Cookie"].lower()
    assert _last_ip() == "198.51.100.7"


# through a real nginx --------------------------------------------------------------------------
@pytest.mark.db
def test_audit_records_the_forwarded_client_only_from_a_trusted_proxy(live, people, nginx):
    a, _ = people
    token, code, _ = create_share(live, a.study_uid)
    wrong = "000000" if code != "000000" else "111111"
    _trust(live, "127.0.0.1/32")
    # the client's own X-Forwarded-For stays on the left of nginx's list: not believed
    status, _, _ = nginx.open_share(token, wrong, source=X,
                                    headers={"X-Forwarded-For": "203.0.113.9",
                                             "X-Real-IP": "203.0.113.9"})
    assert status == 403
    assert _last_ip() == X
    status, _, _ = nginx.open_share(token, wrong, source=Y)
    assert status == 403
    assert _last_ip() == Y
    _trust(live, "")                              # not trusted: the proxy is the client
    status, _, _ = nginx.open_share(token, wrong, source=X,
                                    headers={"X-Forwarded-For": "203.0.113.9"})
    assert status == 403
    assert _last_ip() == "127.0.0.1"


@pytest.mark.db
def test_admin_allow_list_checks_the_real_client(live, nginx):
    _trust(live, "127.0.0.1/32")
    live.ctx.config.set_base(admin_allow_list=f"{X}/32")
    auth = staff_headers("sec1", ("secadmin",))
    status, _, body = nginx.call("GET", "/api/admin/security", headers=auth, source=X)
    assert status == 200, body
    assert json.loads(body)["client_ip"] == X
    status, _, body = nginx.call("GET", "/api/admin/security", headers=auth, source=Y)
    assert status == 403 and "白名单" in json.loads(body)["error"]
    # a client naming an allowed address itself gains nothing
    status, _, _ = nginx.call("GET", "/api/admin/security", source=Y,
                              headers={**auth, "X-Forwarded-For": X, "X-Real-IP": X})
    assert status == 403
    _trust(live, "")             # untrusted proxy: everyone is 127.0.0.1, not on the list
    status, _, _ = nginx.call("GET", "/api/admin/security", headers=auth, source=X)
    assert status == 403


@pytest.mark.db
def test_secure_cookie_and_one_hsts_header_behind_tls_termination(live, people, nginx):
    a, _ = people
    token, code, _ = create_share(live, a.study_uid, max_opens=5)
    _trust(live, "127.0.0.1/32")
    status, hdrs, _ = nginx.open_share(token, code)
    assert status == 200
    cookies = _headers(hdrs, "Set-Cookie")
    assert cookies and all("; secure" in c.lower() for c in cookies), cookies
    hsts = _headers(hdrs, "Strict-Transport-Security")
    assert len(hsts) == 1 and hsts[0].startswith("max-age=31536000")
    _trust(live, "")
    status, hdrs, _ = nginx.open_share(token, code)
    assert status == 200
    assert not any("; secure" in c.lower() for c in _headers(hdrs, "Set-Cookie"))
    assert len(_headers(hdrs, "Strict-Transport-Security")) == 1   # nginx's own


@pytest.mark.db
def test_one_attackers_wrong_codes_never_refuse_other_patients(live, people, nginx):
    """Client X guesses share A's code 21 times (A locks) and guesses 4 times each on 4 more
    shares (no lock): share B's correct code from client Y, and share C's from X itself,
    still open (the per-address limit is high, each share locks on its own)."""
    a, b = people
    _trust(live, "127.0.0.1/32")
    token_a, code_a, d = create_share(live, a.study_uid)
    wrong = "000000" if code_a != "000000" else "111111"
    seen = [nginx.open_share(token_a, wrong, source=X)[0] for _ in range(21)]
    assert seen[:4] == [403] * 4 and seen[4:] == [429] * 17, seen
    assert Share.get_by_id(d["share"]["id"]).locked_until is not None
    for _ in range(4):
        t, c, _ = create_share(live, a.study_uid)
        w = "000000" if c != "000000" else "111111"
        assert [nginx.open_share(t, w, source=X)[0] for _ in range(4)] == [403] * 4
    token_b, code_b, _ = create_share(live, b.study_uid)
    status, _, body = nginx.open_share(token_b, code_b, source=Y)
    assert status == 200, body
    token_c, code_c, _ = create_share(live, a.study_uid)
    status, _, body = nginx.open_share(token_c, code_c, source=X)
    assert status == 200, body
    # share A itself stays locked for everyone (its lock is carried by the share)
    assert nginx.open_share(token_a, code_a, source=Z)[0] == 429


@pytest.mark.db
def test_identity_checks_lock_per_identity_not_per_address(live, people, nginx):
    """10 failed verifications naming patient A's phone (client X) lock checks of that phone
    from every address, even with the right data (client Y); X itself still verifies
    patient B."""
    a, b = people
    _trust(live, "127.0.0.1/32")

    def verify(source, **factors):
        return nginx.call("POST", "/api/verify", factors, source=source)

    for i in range(10):
        assert verify(X, phone=a.phone, accession=f"NOPE-{i}")[0] == 403
    status, _, body = verify(Y, phone=a.phone, accession=a.accession)
    assert status == 429 and "身份信息验证失败次数过多" in json.loads(body)["error"]
    status, _, body = verify(X, phone=b.phone, accession=b.accession)
    assert status == 200, body
    ev = (AuditEvent.select().where((AuditEvent.action == "verify")
                                    & (AuditEvent.outcome == "fail")).first())
    assert ev.ip == X and a.phone not in ev.object_id and ev.object_id.startswith("p")


def test_per_address_limit_default_spares_a_hospital_nat():
    from server.config import SETTINGS_BY_NAME
    assert SETTINGS_BY_NAME["access_ip_max_failures"].default >= 200
