"""OHIF v3 at /ohif/ (server/handlers/ohif.py, docs/ohif.md): the pinned viewer installed
with `./run.sh ohif-install` into var/ohif-cache (kept between runs; needs the npm registry
once), a doctor signs in, opens /ohif/, sees the demo exams with Chinese names, opens a CT
and the first image paints. Plus the HTTP rules: staff only, 404 when disabled, our
app-config, the relaxed CSP under /ohif/ only. Screenshots: tests/artifacts/ohif_*.png."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import ARTIFACTS, PASSWORD, USER, _need_chromium, live_demo, signed_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "var" / "ohif-cache"
U = "1.2.826.0.1.3680043.10.1373"
CT_OLD = f"{U}.1.1"
ES = f"{U}.1.5"     # gastroscopy, JPEG baseline


@pytest.fixture(scope="module")
def ohif_dir():
    if shutil.which("npm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("npm missing in CI (apt-get install npm, or Node.js 20)")
        pytest.skip("npm missing: ./run.sh ohif-install needs it")
    r = subprocess.run([str(ROOT / "run.sh"), "ohif-install", "--dir", str(CACHE)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return CACHE


@pytest.fixture(scope="module")
def ohif_server(tmp_path_factory, ohif_dir):
    _need_chromium()
    with live_demo(tmp_path_factory.mktemp("ohif"), ohif_enabled=True,
                   ohif_dir=str(ohif_dir)) as server:
        yield server


CODEC_STUDY = "1.2.826.0.1.3680043.10.1373.99.7"


@pytest.fixture(scope="module")
def codec_study(ohif_server, tmp_path_factory):
    """One study whose two series are stored JPEG 2000 and JPEG-LS: OHIF decodes them with
    its WebAssembly codecs (openjpeg, charls) in a web worker."""
    import numpy as np
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

    from adapters.importer import Importer
    from tests.dicom_factory import ct_dataset
    folder = tmp_path_factory.mktemp("codecs")
    yy, xx = np.mgrid[:256, :256]
    pixels = ((np.hypot(yy - 128, xx - 128) < 100) * 1000 + (xx % 32 < 4) * 400).astype(np.int16)
    for n, syntax in enumerate((JPEG2000Lossless, JPEGLSLossless), 1):
        ds = ct_dataset(patient_id="OHIF-CODEC", name="Codec^Test", study_uid=CODEC_STUDY,
                        series_uid=f"{CODEC_STUDY}.{n}", sop_uid=f"{CODEC_STUDY}.{n}.1",
                        accession="OHIFCODEC1", size=256)
        ds.SeriesNumber = n
        ds.compress(syntax, pixels)
        ds.save_as(folder / f"{n}.dcm", enforce_file_format=True)
    summary = Importer(ohif_server.ctx.catalog, charset_fallback="GB18030",
                       max_file_bytes=1 << 30, fast_copies=False).run([str(folder)])
    assert summary.as_dict()["imported"] == 2, summary.as_dict()
    return CODEC_STUDY


def fetch(url, cookie=None):
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def session_cookie(server, user=USER, password=PASSWORD):
    import json
    req = urllib.request.Request(server.url + "/api/auth/login", method="POST",
                                 data=json.dumps({"username": user, "password": password}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return "; ".join(c.split(";")[0] for c in r.headers.get_all("Set-Cookie"))


def test_http_rules(ohif_server):
    base = ohif_server.url
    # no staff session: the page goes to the sign-in page, files are refused
    status, headers, _ = fetch(base + "/ohif/viewer?StudyInstanceUIDs=" + CT_OLD)
    assert status == 302 and headers["Location"].startswith("/login?next=%2Fohif%2Fviewer")
    status, _, body = fetch(base + "/ohif/app-config.js")
    assert status == 401 and b"dicomweb" not in body
    # a staff member who must change the password goes there first
    from tests.conftest import make_staff
    make_staff("ohif_change", ("doctor",), "Ohif-Change-Pass-1", must_change=True)
    status, headers, _ = fetch(base + "/ohif/", session_cookie(ohif_server, "ohif_change",
                                                               "Ohif-Change-Pass-1"))
    assert status == 302 and headers["Location"].startswith("/login?change=1&next=%2Fohif%2F")
    cookie = session_cookie(ohif_server)
    # signed in: index.html for any client-side route, re-based to /ohif/
    status, headers, body = fetch(base + "/ohif/viewer?StudyInstanceUIDs=" + CT_OLD, cookie)
    assert status == 200 and b'window.PUBLIC_URL="/ohif/"' in body
    csp = headers["Content-Security-Policy"]
    assert "'unsafe-eval'" in csp and "'sha256-" in csp and "frame-ancestors 'none'" in csp
    script_src = csp.split("script-src")[1].split(";")[0]
    assert "'unsafe-inline'" not in script_src and "blob:" not in script_src
    assert "http" not in csp and "*" not in csp
    # our app-config, not the package's (which points at a public demo server)
    status, _, body = fetch(base + "/ohif/app-config.js", cookie)
    ours = (ROOT / "conf" / "ohif" / "app-config.js").read_bytes()
    assert status == 200 and body == ours and b"://" not in ours
    # a missing file is a 404, not index.html served as script; dot paths are never files
    assert fetch(base + "/ohif/nope.bundle.js", cookie)[0] == 404
    status, _, body = fetch(base + "/ohif/.cloudfilm-ohif.json", cookie)
    assert b"integrity" not in body
    status, _, body = fetch(base + "/ohif/%2e%2e/%2e%2e/conf/cloudfilm.toml", cookie)
    assert b"database_url" not in body
    # the doctor page's link
    status, _, body = fetch(base + "/api/ohif", cookie)
    assert status == 200 and b'"/ohif/viewer"' in body
    assert fetch(base + "/api/ohif")[0] == 401
    # the relaxed policy is for /ohif/ only
    for path in ("/login", "/workspace", "/dicomweb/studies"):
        csp = fetch(base + path, cookie)[1].get("Content-Security-Policy", "")
        assert "unsafe-eval" not in csp and "blob:" not in csp.split("script-src")[-1].split(";")[0]


def test_disabled_is_404(tmp_path, ohif_server):
    from server.config import load_config
    config = load_config(path=tmp_path / "none.toml", env={}, overrides={})
    assert config.ohif_enabled is False and config.ohif_dir == "var/ohif"
    # the same (installed) server with the setting off: one database per process
    cookie = session_cookie(ohif_server)
    ohif_server.ctx.config.set_base(ohif_enabled=False)
    try:
        assert fetch(ohif_server.url + "/ohif/", cookie)[0] == 404
        assert fetch(ohif_server.url + "/ohif/app-config.js", cookie)[0] == 404
        status, _, body = fetch(ohif_server.url + "/api/ohif", cookie)
        assert status == 200 and b'"enabled": false' in body
    finally:
        ohif_server.ctx.config.set_base(ohif_enabled=True)


def test_install_refuses_other_bytes(tmp_path):
    """A registry (or mirror) answering another tarball for the pinned version: refused,
    the installed viewer left as it was."""
    import tarfile

    from server import ohif_install
    pkg = tmp_path / "package" / "dist"
    pkg.mkdir(parents=True)
    (pkg / "index.html").write_text('<script>window.PUBLIC_URL="/"</script>')
    tgz = tmp_path / "ohif-app-3.13.2.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(tmp_path / "package", arcname="package")
    npm = tmp_path / "npm"
    npm.write_text(f"#!/bin/sh\ncp {tgz} \"$5\"/\necho '[{{\"filename\": \"ohif-app-3.13.2.tgz\"}}]'\n")
    npm.chmod(0o755)
    dest = tmp_path / "ohif"
    dest.mkdir()
    (dest / "index.html").write_text("previous")
    with pytest.raises(ohif_install.InstallError, match="integrity mismatch"):
        ohif_install.install(dest, npm=str(npm), log=lambda *a: None)
    assert (dest / "index.html").read_text() == "previous"


def test_no_third_party_urls_in_index(ohif_dir):
    html = (ohif_dir / "index.html").read_text()
    assert "http://" not in html and "https://" not in html
    for ref in ('src="/ohif/app-config.js"', 'window.PUBLIC_URL="/ohif/"'):
        assert ref in html
    assert 'src="/app' not in html and 'href="/assets' not in html


def test_doctor_opens_ct(browser, ohif_server):
    context = signed_in(browser, ohif_server, viewport={"width": 1400, "height": 900},
                        locale="zh-CN")
    outside = []
    context.route(lambda url: not url.startswith(ohif_server.url),
                  lambda route: (outside.append(route.request.url), route.abort()))
    page = context.new_page()
    errors, csp = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
    # the doctor's exam list links each exam to OHIF
    page.goto(ohif_server.url + "/staff/doctor?patient_id=DF100231")
    page.wait_for_selector("a.ohif-link", timeout=30000)
    hrefs = page.eval_on_selector_all("a.ohif-link", "as => as.map(a => a.getAttribute('href'))")
    assert f"/ohif/viewer?StudyInstanceUIDs={CT_OLD}" in hrefs
    assert page.locator("a.ohif-link").first.inner_text() == "OHIF 阅片"
    page.goto(ohif_server.url + "/ohif/")
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        page.wait_for_selector(f"text={NAME}", timeout=60000)
        page.wait_for_selector(f"text={PATIENT}", timeout=10000)
    finally:
        page.screenshot(path=str(ARTIFACTS / "ohif_study_list.png"))
    page.goto(ohif_server.url + f"/ohif/viewer?StudyInstanceUIDs={CT_OLD}")
    page.wait_for_selector("canvas", timeout=60000)
    page.wait_for_function(PAINTED, timeout=60000)
    page.screenshot(path=str(ARTIFACTS / "ohif_ct.png"))
    from PIL import Image, ImageStat
    shot = Image.open(io.BytesIO(page.locator(".cornerstone-viewport-element").first.screenshot()))
    assert ImageStat.Stat(shot.convert("L")).extrema[0][1] > 60
    # the endoscopy exam is JPEG baseline: OHIF decodes it with its WebAssembly codec in a
    # worker, which is what the relaxed policy allows
    page.goto(ohif_server.url + f"/ohif/viewer?StudyInstanceUIDs={ES}")
    page.wait_for_selector("canvas", timeout=60000)
    page.wait_for_function(PAINTED, timeout=60000)
    page.screenshot(path=str(ARTIFACTS / "ohif_es.png"))
    assert not errors, errors
    assert not outside, outside
    assert not csp, csp
    context.close()


def test_compressed_ct_decodes(browser, ohif_server, codec_study):
    """JPEG 2000 and JPEG-LS frames are sent as stored and decoded by OHIF's WebAssembly
    codecs in workers: the reason for 'unsafe-eval' in the policy (without it neither
    series paints)."""
    context = signed_in(browser, ohif_server, viewport={"width": 1400, "height": 900},
                        locale="zh-CN")
    page = context.new_page()
    messages, errors = [], []
    page.on("console", lambda m: messages.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("worker", lambda w: w.on("console", lambda m: messages.append(m.text)))
    page.goto(ohif_server.url + f"/ohif/viewer?StudyInstanceUIDs={codec_study}")
    try:
        page.wait_for_selector("canvas", timeout=60000)
        page.wait_for_function(PAINTED, timeout=60000)
    finally:
        page.screenshot(path=str(ARTIFACTS / "ohif_codecs.png"))
    csp = [m for m in messages if "Content Security Policy" in m or "wasm" in m.lower()]
    assert not csp, csp
    assert not errors, errors
    context.close()


# a viewport canvas holding non-black pixels
PAINTED = """() => [...document.querySelectorAll('.cornerstone-viewport-element canvas')].some(c => {
  if (!c.width || !c.height) return false;
  const t = document.createElement('canvas'); t.width = 64; t.height = 64;
  const g = t.getContext('2d'); g.drawImage(c, 0, 0, 64, 64);
  const d = g.getImageData(0, 0, 64, 64).data;
  for (let i = 0; i < d.length; i += 4) if (d[i] + d[i+1] + d[i+2] > 90) return true;
  return false; })"""

# the demo CT's Chinese study description and its patient's Chinese name
# (adapters/demo_data.py): OHIF's study list shows the Alphabetic group of PatientName,
# which /dicomweb fills with the name as stored
NAME = "胸部+全腹部CT平扫"
PATIENT = "张伟"
