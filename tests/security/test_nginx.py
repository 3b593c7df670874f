"""conf/nginx/cloudfilm.conf: `nginx -t` accepts it, and nginx run with it in front of a live
server serves HTTPS with HSTS, redirects plain HTTP and shows no version."""
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import ROOT

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _need_nginx():
    if not os.path.exists(NGINX):
        if os.environ.get("CI") == "true":
            pytest.fail("nginx missing in CI (.ci/run installs nginx-light)")
        pytest.skip("nginx not installed (apt-get install nginx-light)")


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _prepare(tmp_path, upstream_port, http_port, https_port):
    return prepare_site(tmp_path, "cloudfilm.conf", {8080: upstream_port}, http_port,
                        https_port)


def prepare_site(tmp_path, conf: str, upstreams: dict, http_port, https_port):
    """A runnable nginx.conf in tmp_path with the shipped conf/nginx/`conf`: a test
    certificate, the upstream ports replaced ({shipped port: test port}), listening on
    127.0.0.1 only. Returns the certificate's path."""
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    r = subprocess.run([str(ROOT / "run.sh"), "make-cert", "--cert", str(cert), "--key",
                        str(key), "--hosts", "localhost,127.0.0.1"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    site = (ROOT / "conf" / "nginx" / conf).read_text(encoding="utf-8")
    site = site.replace("/etc/cloudfilm/tls/", f"{tmp_path}/tls/")
    for shipped, port in upstreams.items():
        site = site.replace(f"127.0.0.1:{shipped}", f"127.0.0.1:{port}")
    site = re.sub(r"listen 80;", f"listen 127.0.0.1:{http_port};", site)
    site = re.sub(r"listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;", site)
    site = re.sub(r"\s*listen \[::\]:\d+[^;]*;", "", site)
    (tmp_path / "cloudfilm.conf").write_text(site, encoding="utf-8")
    (tmp_path / "logs").mkdir()
    main = f"""worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/logs/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;
  fastcgi_temp_path {tmp_path}/fcgi; uwsgi_temp_path {tmp_path}/uwsgi;
  scgi_temp_path {tmp_path}/scgi;
  include {tmp_path}/cloudfilm.conf;
}}
"""
    (tmp_path / "nginx.conf").write_text(main, encoding="utf-8")
    return cert


def test_nginx_t_accepts_the_shipped_config(tmp_path):
    _need_nginx()
    _prepare(tmp_path, 8080, _free_port(), _free_port())
    r = subprocess.run([NGINX, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "test is successful" in r.stderr, r.stderr


@pytest.mark.db
def test_nginx_in_front_of_cloudfilm(live, tmp_path):
    _need_nginx()
    http_port, https_port = _free_port(), _free_port()
    cert = _prepare(tmp_path, live.port, http_port, https_port)
    proc = subprocess.Popen([NGINX, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path),
                             "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        deadline = time.time() + 20
        while True:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{https_port}/healthz",
                                            context=ctx, timeout=5) as r:
                    headers, body = r.headers, r.read()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        assert b'"ok": true' in body
        assert headers["Strict-Transport-Security"].startswith("max-age=31536000")
        assert "nginx/" not in (headers.get("Server") or "")
        assert headers["X-Frame-Options"] == "DENY"        # CloudFilm's own headers pass
        conn = __import__("http.client").client.HTTPConnection("127.0.0.1", http_port,
                                                               timeout=5)
        conn.request("GET", "/film/1.2.3?x=1")
        r = conn.getresponse()
        assert r.status == 301 and r.getheader("Location").startswith("https://")
        r.read()
        conn.close()
    finally:
        proc.terminate()
        proc.wait(10)
