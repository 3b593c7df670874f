"""Viewer benchmark (not a test): the film view in Chromium under CDP throttling.

    .venv/bin/python bench/viewer_bench.py                 # starts ./run.sh with a 200-slice demo
    .venv/bin/python bench/viewer_bench.py --url http://127.0.0.1:8095 --user doctor1 --password …

Profiles: low-end phone (CPU 4× slower, 1.6 Mbit/s down, 150 ms RTT) and 4G (9 Mbit/s, 60 ms).
Figures: bytes before the first image, the code's answer included (it carries the study
JSON the film view uses) (target ≤ 80 KB), viewer code gzipped (≤ 60 KB), first
CT image painted after the share code is submitted (≤ 1.0 s low-end, every page in between
counted; also from the code accepted and from the film page's navigation), the same for a
second share opened afterwards in the same browser (≤ 1.0 s, no static file fetched again), a preview of every slice (≤ 15 s after
the first image), the full-quality frame after scrolling stops (≤ 500 ms), window drag
feedback (same frame) and the exact image after the drag pauses (≤ 400 ms on 4G).
Results go to bench/results/viewer_<date>.json and .md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CHROMIUM = "/usr/bin/chromium"
UA = ("Mozilla/5.0 (Linux; Android 10; V2001A) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Version/4.0 Chrome/107.0 Mobile Safari/537.36 MicroMessenger/8.0.40")
PROFILES = {
    "low-end": {"cpu": 4, "down_kbps": 1600, "up_kbps": 750, "rtt_ms": 150},
    "4g": {"cpu": 1, "down_kbps": 9000, "up_kbps": 4000, "rtt_ms": 60},
}
CT_STUDY = "1.2.826.0.1.3680043.10.1373.1.1"
CT_STUDY_2 = "1.2.826.0.1.3680043.10.1373.1.2"
PASSWORD = "Bench-Viewer-Pass-1"


def code_size() -> dict:
    base = ROOT / "viewer_static"   # the viewer only: share/, portal/, staff/ pages are not its code
    files = [p for p in [*base.glob("*.html"), *(base / "js").rglob("*.js"), *(base / "css").glob("*.css")]]
    raw = sum(p.stat().st_size for p in files)
    gz = sum(len(gzip.compress(p.read_bytes(), 6)) for p in files)
    return {"files": len(files), "raw_bytes": raw, "gzip_bytes": gz}


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_server(slices: int):
    tmp = Path(tempfile.mkdtemp(prefix="viewer-bench-"))
    port = free_port()
    env = dict(os.environ, CLOUDFILM_DATABASE_URL=f"sqlite:///{tmp}/db.sqlite",
               CLOUDFILM_DATA_DIR=str(tmp / "data"), CLOUDFILM_SECRET_KEY_FILE=str(tmp / "key"),
               CLOUDFILM_PORT=str(port), CLOUDFILM_DEMO_CT_SLICES=str(slices))
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([str(ROOT / "run.sh"), "serve"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 600:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                break
        except OSError:
            if proc.poll() is not None:
                raise SystemExit((tmp / "server.log").read_text())
            time.sleep(0.5)
    subprocess.run([str(ROOT / "run.sh"), "user-add", "benchdoc", "--roles", "doctor", "--no-change"],
                   cwd=ROOT, env=dict(env, CLOUDFILM_NEW_USER_PASSWORD=PASSWORD), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return url, proc, tmp


def stop_server(proc, tmp):
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(tmp, ignore_errors=True)


def wait_js(page, fn, arg=None, timeout=60000):
    page.wait_for_function(fn, arg=arg, timeout=timeout, polling=20)


# Runs in every page before its scripts: the share page records when the code was submitted
# and when the code-accepted answer of /api/share/open arrived (wall clock, kept in
# sessionStorage across the navigation to the film view).
ACCEPT_PROBE = """(() => {
  const now = () => String(performance.timeOrigin + performance.now());
  document.addEventListener('submit', () => sessionStorage.setItem('cfCodeSubmitted', now()), true);
  const f = window.fetch;
  window.fetch = async (...a) => {
    const r = await f(...a);
    if (String(a[0]).includes('/api/share/open') && r.ok) {
      sessionStorage.setItem('cfCodeAccepted', now());
      // the answer carries the film's study JSON: its bytes count before the first image
      await r.clone().arrayBuffer();
      const e = performance.getEntriesByType('resource').filter(x => x.name.includes('/api/share/open')).pop();
      sessionStorage.setItem('cfOpenBytes', String(e ? (e.transferSize || e.encodedBodySize || 0) : 0));
    }
    return r;
  };
})();"""


def make_share(browser, url, user, password, study=None) -> tuple[str, str]:
    """A doctor shares a CT exam (images, no download) through the API: (share URL, code)."""
    api = browser.new_context()
    r = api.request.post(url + "/api/auth/login", data={"username": user, "password": password})
    assert r.status == 200, r.text()
    csrf = r.json()["csrf_token"]
    r = api.request.post(url + "/api/shares", data={"study_uid": study or CT_STUDY, "allow_download": False,
                                                   "max_opens": 2, "expires": "1d"},
                         headers={"X-CSRF-Token": csrf})
    assert r.status == 201, r.text()
    out = r.json()
    api.close()
    path = "/s/" + out["url"].rsplit("/s/", 1)[1]
    return url + path, out["code"]


def run_profile(browser, url, user, password, name, prof) -> dict:
    share_url, code = make_share(browser, url, user, password)
    ctx = browser.new_context(viewport={"width": 360, "height": 640}, device_scale_factor=2,
                              has_touch=True, is_mobile=True, user_agent=UA)
    ctx.add_init_script(ACCEPT_PROBE)
    page = ctx.new_page()
    cdp = ctx.new_cdp_session(page)
    cdp.send("Network.enable")
    # a new browser context starts with an empty cache; the second share below finds the
    # versioned static files cached as immutable, as a phone would
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": False})
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": prof["rtt_ms"],
        "downloadThroughput": prof["down_kbps"] * 1000 / 8,
        "uploadThroughput": prof["up_kbps"] * 1000 / 8})
    cdp.send("Emulation.setCPUThrottlingRate", {"rate": prof["cpu"]})
    # the patient's path: the share link, the 6-digit code, then the film view
    page.goto(share_url, wait_until="load")
    page.wait_for_selector("#code", state="visible", timeout=60000)
    page.fill("#code", code)
    page.click("#open")
    page.wait_for_url("**/film/**", timeout=60000)
    wait_js(page, "() => document.body && document.body.dataset.firstImage")
    first_ms = float(page.evaluate("() => document.body.dataset.firstImage"))
    after_code, after_submit = code_to_image(page, first_ms)
    before = page.evaluate("""(t) => {
        const nav = performance.getEntriesByType('navigation')[0];
        let bytes = nav ? nav.transferSize : 0, n = nav ? 1 : 0;
        for (const e of performance.getEntriesByType('resource'))
          if (e.responseEnd <= t + 1) { bytes += e.transferSize || e.encodedBodySize || 0; n++; }
        const open = Number(sessionStorage.getItem('cfOpenBytes') || 0);
        if (open) { bytes += open; n++; }
        return { bytes, n }; }""", first_ms)
    n = page.evaluate("() => window.cfViewport.n")
    wait_js(page, "() => document.querySelector('#viewport').dataset.progress === '1.000'",
            timeout=180000)
    all_previews_ms = page.evaluate("() => performance.now()") - first_ms
    # scroll (as a finger would: many steps), then time the full-quality frame after it stops
    full_ms = []
    for target in (n // 4, (3 * n) // 4):
        page.evaluate("""async (target) => {
            const vp = window.cfViewport;
            const step = target > vp.index ? 1 : -1;
            while (vp.index !== target) { vp.scrollBy(step); await new Promise(r => requestAnimationFrame(r)); }
        }""", target)
        t0 = page.evaluate("() => performance.now()")
        wait_js(page, "(i) => { const d = document.querySelector('#viewport').dataset; return d.index === String(i) && d.loaded === 'exact'; }", target)
        full_ms.append(page.evaluate("() => performance.now()") - t0)
    # window drag: the filter changes synchronously, then the exact render
    wl = page.evaluate("""async () => {
        const vp = window.cfViewport;
        const img = () => document.querySelector('#viewport img.vp-img');
        const f0 = img().style.filter;
        const start = vp.currentWindow();
        let sameFrame = true;
        for (let k = 1; k <= 10; k++) {
          vp.setWindow({ c: start.c + 4 * k, w: start.w + 20 * k }, true);
          if (img().style.filter === f0) sameFrame = false;
          await new Promise(r => requestAnimationFrame(r));
        }
        const t0 = performance.now();
        while (document.querySelector('#viewport').dataset.loaded !== 'exact') {
          await new Promise(r => setTimeout(r, 5));
          if (performance.now() - t0 > 20000) break;
        }
        return { sameFrame, exactMs: performance.now() - t0 };
    }""")
    # a second share (the other CT exam) in the same browser, after the first
    share2, code2 = make_share(browser, url, user, password, CT_STUDY_2)
    page.goto(share2, wait_until="load")
    page.wait_for_selector("#code", state="visible", timeout=60000)
    page.fill("#code", code2)
    page.click("#open")
    page.wait_for_url("**/film/**", timeout=60000)
    wait_js(page, "() => document.body && document.body.dataset.firstImage")
    first2 = float(page.evaluate("() => document.body.dataset.firstImage"))
    _, second_after_submit = code_to_image(page, first2)
    # static files the second film view fetched over the network instead of from the cache
    revalidated = page.evaluate("""() => performance.getEntriesByType('resource')
        .filter(e => e.name.includes('/static/') && e.transferSize > 0).map(e => e.name)""")
    ctx.close()
    return {
        "profile": name, **prof, "slices": n,
        "bytes_before_first_image": before["bytes"],
        "requests_before_first_image": before["n"],
        "first_image_after_submit_ms": round(after_submit) if after_submit is not None else None,
        "second_share_after_submit_ms": (round(second_after_submit)
                                         if second_after_submit is not None else None),
        "second_visit_static_fetched": len(revalidated),
        "first_image_after_code_ms": round(after_code) if after_code is not None else None,
        "first_image_ms": round(first_ms),
        "all_previews_after_first_ms": round(all_previews_ms),
        "full_after_scroll_ms": [round(x) for x in full_ms],
        "window_feedback_same_frame": wl["sameFrame"],
        "window_exact_after_pause_ms": round(wl["exactMs"]),
    }


def code_to_image(page, first_ms) -> tuple:
    """(ms from the code accepted, ms from the code submitted) to the first image."""
    return page.evaluate("""(t) => {
        const at = performance.timeOrigin + t;
        const acc = Number(sessionStorage.getItem('cfCodeAccepted'));
        const sub = Number(sessionStorage.getItem('cfCodeSubmitted'));
        return [acc ? at - acc : null, sub ? at - sub : null]; }""", first_ms)


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def summarise(runs: list[dict]) -> dict:
    """Median of every figure over the repeats of one profile."""
    out = {}
    for key in ("bytes_before_first_image", "requests_before_first_image", "first_image_after_code_ms",
                "first_image_after_submit_ms", "second_share_after_submit_ms",
                "second_visit_static_fetched",
                "first_image_ms", "all_previews_after_first_ms", "window_exact_after_pause_ms"):
        out[key] = median([r[key] for r in runs])
    out["full_after_scroll_ms"] = median([x for r in runs for x in r["full_after_scroll_ms"]])
    out["full_after_scroll_ms_max"] = max(x for r in runs for x in r["full_after_scroll_ms"])
    out["window_feedback_same_frame"] = all(r["window_feedback_same_frame"] for r in runs)
    return out


def row(label, r, full):
    return (f"| {label} | {r['bytes_before_first_image'] / 1024:.1f} KB ({r['requests_before_first_image']:.0f} req) | "
            f"{r['first_image_after_submit_ms']:.0f} ms | {r['second_share_after_submit_ms']:.0f} ms "
            f"({r['second_visit_static_fetched']:.0f} static fetched) | "
            f"{r['first_image_after_code_ms']:.0f} ms | {r['first_image_ms']:.0f} ms | "
            f"{r['all_previews_after_first_ms']:.0f} ms | {full} | "
            f"{'yes' if r['window_feedback_same_frame'] else 'no'} | {r['window_exact_after_pause_ms']:.0f} ms |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url")
    ap.add_argument("--user", default="benchdoc")
    ap.add_argument("--password", default=PASSWORD)
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3, help="runs per profile (medians are reported)")
    ap.add_argument("--profile", action="append", choices=sorted(PROFILES),
                    help="only this profile (repeatable; default: all)")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright
    proc = tmp = None
    url = args.url
    if not url:
        url, proc, tmp = start_server(args.slices)
    names = args.profile or list(PROFILES)
    runs = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--no-first-run", "--disable-component-update", "--disable-sync"])
            for k in range(args.repeat):      # interleaved, so machine load hits both profiles
                for n in names:
                    load0 = os.getloadavg()[0]
                    r = run_profile(browser, url, args.user, args.password, n, PROFILES[n])
                    r["run"] = k + 1
                    r["loadavg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
                    runs.append(r)
                    print(json.dumps(r), file=sys.stderr)
            browser.close()
    finally:
        if proc:
            stop_server(proc, tmp)
    medians = {n: summarise([r for r in runs if r["profile"] == n]) for n in names}
    out = {"date": dt.datetime.now().isoformat(timespec="seconds"),
           "command": "python " + " ".join(["bench/viewer_bench.py"] + (argv if argv is not None else sys.argv[1:])),
           "cpus": os.cpu_count(), "code": code_size(), "runs": runs, "medians": medians,
           "targets": {"bytes_before_first_image": 80 * 1024, "code_gzip_bytes": 60 * 1024,
                       "first_image_after_submit_ms_low_end": 1000,
                       "second_share_after_submit_ms_low_end": 1000, "all_previews_after_first_ms_low_end": 15000,
                       "full_after_scroll_ms_low_end": 500, "window_exact_after_pause_ms_4g": 400}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M")
    (RESULTS / f"viewer_{stamp}.json").write_text(json.dumps(out, indent=2, ensure_ascii=False))
    slices = runs[0]["slices"] if runs else args.slices
    lines = [f"# Viewer benchmark {out['date']}", "", f"Command: `{out['command']}`", "",
             f"Viewer code: {out['code']['files']} files, {out['code']['raw_bytes'] / 1024:.1f} KB raw, "
             f"**{out['code']['gzip_bytes'] / 1024:.1f} KB gzipped** (target ≤ 60 KB). "
             f"Series: {slices} slices. Path: share link → 6-digit code → film view.", "",
             "| run | bytes before 1st image | code submitted → 1st image | 2nd share: code → 1st image "
             "| 1st image after code accepted | 1st image after film navigation "
             "| all previews after 1st | full after scroll stops | W/L feedback same frame | W/L exact after pause |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        for r in runs:
            if r["profile"] == n:
                lines.append(row(f"{n} #{r['run']} (load {r['loadavg_1m'][0]}→{r['loadavg_1m'][1]})", r,
                                 ", ".join(f"{x} ms" for x in r["full_after_scroll_ms"])))
        m = medians[n]
        lines.append(row(f"**{n} median**", m, f"{m['full_after_scroll_ms']:.0f} ms (max {m['full_after_scroll_ms_max']})"))
    lines += ["", "Targets: ≤ 80 KB before the first image; low-end: first image ≤ 1.0 s after the code is "
              "submitted (every page in between counted), a second share in the same browser ≤ 1.0 s from its "
              "code with no static file fetched again, all previews ≤ 15 s after the first image, full frame "
              "≤ 500 ms after scrolling stops; "
              "4G: exact W/L ≤ 400 ms after the drag pauses. Load = 1-minute load average before→after the "
              f"run on this {os.cpu_count()}-CPU machine (shared; high load = noisy run)."]
    md = "\n".join(lines) + "\n"
    (RESULTS / f"viewer_{stamp}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
