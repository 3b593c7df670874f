"""Volume bench (issue 18): MPR, 3D MIP and volume rendering of a never-viewed 220×512² CT.

    PYTHONPATH=. .venv/bin/python -m bench.volume_bench             # ≈ 1–1.5 min on 2 cores

One run against our server started from this working tree (scratch database and storage,
`--processes` server processes, 2 by default like production), with the viewer's own
requests, over keep-alive connections like a browser's:

  * MPR triple: a fresh server (nothing decoded, no volume), then what MprSet does
    (progressive, issue 18): GET /volume?coarse=1 and GET /volume together; when the coarse
    answer comes first, the three planes with coarse=1; when the full one comes, the planes
    (viewport 512², q85) and their geometry in parallel; over a browser's six keep-alive
    connections. "any quality" is when every pane shows an image (coarse or full), "full"
    when every pane shows its full-quality one (X-Quality says which one came).
  * first 3D view: the server restarted again (never viewed), then what MipView does on the
    3D button: a 256-px preview MIP, and the 512-px one 250 ms later.
  * after releasing a rotation: MIP and VR (each preset) at 512 px, new angles (uncached).
  * during a drag: 256-px images one at a time (the viewer's busy flag), new angles for
    `--drag-s` seconds: images/s, MIP and VR (bone).
  * oblique plane: HTTP latency of a 512² oblique MPR at new angles, and in this process the
    plane's kernel alone (`mpr_image(..., 'oblique')`) on the same phantom.
  * in-process kernels on the phantom volume (no HTTP, no JPEG): MIP / VR at 512 and 256 px.
  * HU at the pointer: the values endpoint (.../frames/1/values) on a restarted server: a
    never-viewed slice (decode + transfer) and a slice whose image was just shown (decoded);
    afterwards the viewer reads the value from the cached array (the same lookup in Python
    on the answer is reported, microseconds).

The load average is recorded before and after. Results: bench/results/volume_<date>.json and
.md (with the command).
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.lib.cloudfilm import CloudFilmServer  # noqa: E402
from bench.lib.httpclient import Client  # noqa: E402
from bench.lib.phantom import make_series  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PRESETS = ("bone", "cta", "lung", "soft")
# figure -> (target, "<=" or ">=", unit)
TARGETS = {
    "mpr_triple_any_s": (1.0, "<=", "s"),
    "mpr_triple_full_s": (2.0, "<=", "s"),
    "first_3d_s": (1.0, "<=", "s"),
    "mip_512_after_release_ms": (300.0, "<=", "ms"),
    "vr_512_after_release_ms": (300.0, "<=", "ms"),
    "drag_mip_256_img_per_s": (10.0, ">=", "img/s"),
    "drag_vr_256_img_per_s": (10.0, ">=", "img/s"),
    "oblique_kernel_ms": (5.0, "<=", "ms"),
    "hu_first_never_viewed_ms": (50.0, "<=", "ms"),
    "hu_first_after_image_ms": (50.0, "<=", "ms"),
}
LABELS = {
    "mpr_triple_any_s": "MPR triple on screen, any quality",
    "mpr_triple_full_s": "MPR triple, full quality",
    "first_3d_s": "first 3D view (256-px MIP preview, never viewed)",
    "first_3d_full_s": "first 3D view at 512 px (never viewed)",
    "mip_512_after_release_ms": "MIP 512 px after releasing a rotation (median)",
    "vr_512_after_release_ms": "VR 512 px after releasing a rotation (median, all presets)",
    "drag_mip_256_img_per_s": "during a drag: MIP images/s at 256 px",
    "drag_vr_256_img_per_s": "during a drag: VR (bone) images/s at 256 px",
    "oblique_http_ms": "oblique plane 512² over HTTP (median)",
    "oblique_kernel_ms": "oblique plane kernel (in process, median)",
    "hu_first_never_viewed_ms": "HU at the pointer: first values of a never-viewed slice (median)",
    "hu_first_after_image_ms": "HU at the pointer: first values of a slice just shown (median)",
    "hu_lookup_cached_us": "HU at the pointer once the values are cached (one array read)",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Browser:
    """A few keep-alive connections (a browser's per-host pool); each request's ms."""

    def __init__(self, base: str, token: str | None, n: int = 6):
        h = {"Authorization": f"Bearer {token}"} if token else {}
        self.headers = h
        self.clients = [Client(base, h) for _ in range(n)]
        self.pool = ThreadPoolExecutor(n)
        self.free: "queue.Queue[Client]" = queue.Queue()
        for c in self.clients:
            self.free.put(c)
        self.tasks = ThreadPoolExecutor(4 * n)

    def fetch(self, path: str) -> tuple[bytes, dict]:
        """GET on the next free connection (waits for one, as a browser queues): body and
        response headers."""
        client = self.free.get()
        try:
            st, body, headers = _get_with_headers(client, path)
        finally:
            self.free.put(client)
        if st != 200:
            raise RuntimeError(f"GET {path} -> {st}: {body[:300]!r}")
        return body, headers

    def get(self, path: str, conn: int = 0) -> float:
        t0 = time.perf_counter()
        st, body = self.clients[conn].get(path)
        if st != 200:
            raise RuntimeError(f"GET {path} -> {st}: {body[:300]!r}")
        return (time.perf_counter() - t0) * 1000.0

    def parallel(self, paths: list[str]) -> list[float]:
        """Start together on separate connections; each one's finish time (ms from start)."""
        t0 = time.perf_counter()

        def one(i_path):
            i, p = i_path
            self.get(p, i)
            return (time.perf_counter() - t0) * 1000.0
        return list(self.pool.map(one, enumerate(paths)))

    def close(self) -> None:
        self.pool.shutdown()
        self.tasks.shutdown()


def _get_with_headers(client: Client, path: str) -> tuple[int, bytes, dict]:
    """Client.get, keeping the response headers (X-Quality)."""
    for attempt in (0, 1):
        try:
            client.c.request("GET", path, headers=client.headers)
            r = client.c.getresponse()
            return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
        except (ConnectionError, OSError, http.client.HTTPException):
            client.c.close()
            client.c = client.__class__(client.base, client.headers).c
            if attempt:
                raise
    raise AssertionError


PLANES = ("axial", "coronal", "sagittal")


def mpr_triple(br: Browser, base: str) -> dict:
    """MprSet.start()/update() on a never-viewed series (see the module doc)."""
    t0 = time.perf_counter()
    q = "viewport=512,512&window=40,400&quality=85"
    ms = lambda: round((time.perf_counter() - t0) * 1000)  # noqa: E731

    def plane(path):
        _, h = br.fetch(path)
        return ms(), h.get("x-quality", "")

    full_info = threading.Event()

    def coarse_flow():
        body, _ = br.fetch(f"{base}/volume?coarse=1")
        t_info = ms()
        if json.loads(body).get("quality") != "coarse" or full_info.is_set():
            return t_info, {}               # the viewer shows the full planes at once
        futs = {p: br.tasks.submit(plane, f"{base}/mpr/{p}?{q}&coarse=1") for p in PLANES}
        return t_info, {p: f.result() for p, f in futs.items()}

    def full_flow():
        br.fetch(f"{base}/volume")
        full_info.set()
        t_vol = ms()
        futs = {p: br.tasks.submit(plane, f"{base}/mpr/{p}?{q}") for p in PLANES}
        geo = [br.tasks.submit(br.fetch, f"{base}/mpr/{p}/geometry?viewport=512,512")
               for p in PLANES]
        for g in geo:
            g.result()
        return t_vol, {p: f.result() for p, f in futs.items()}

    cf, ff = br.tasks.submit(coarse_flow), br.tasks.submit(full_flow)
    (t_cinfo, coarse), (t_vol, full) = cf.result(), ff.result()
    if any(qual != "full" for _, qual in full.values()):
        raise RuntimeError(f"a full-quality plane was not full: {full}")
    # a pane shows whichever came first (a coarse one arriving later is superseded)
    first = {p: min([full[p][0]] + ([coarse[p][0]] if p in coarse else [])) for p in PLANES}
    return {"coarse_volume_info_ms": t_cinfo, "volume_ms": t_vol,
            "coarse_planes": coarse, "full_planes": full,
            "mpr_triple_any_s": round(max(first.values()) / 1000, 3),
            "mpr_triple_full_s": round(max(t for t, _ in full.values()) / 1000, 3),
            "with_geometry_s": round(time.perf_counter() - t0, 3)}


def hu_values(br: Browser, base: str, sops: list[str]) -> dict:
    """The values endpoint: five never-viewed slices, then five whose image was shown just
    before (decoded); the lookup of one value in the answer (the viewer's, once cached)."""
    import numpy as np
    n = len(sops)
    never = [sops[n // 7 + 3 * i] for i in range(5)]
    shown = [sops[n // 2 + 3 * i] for i in range(5)]
    inst = f"{base}/instances/{{}}/frames/1"
    t_never = [br.get(inst.format(s) + "/values") for s in never]
    t_shown = []
    for s in shown:
        br.get(inst.format(s).replace("/api/render/", "/dicomweb/") + "/rendered?quality=85")
        t_shown.append(br.get(inst.format(s) + "/values"))
    body, h = br.fetch(inst.format(shown[0]) + "/values")
    t0 = time.perf_counter()
    for i in range(1000):
        arr = np.frombuffer(body, "<i2" if h["x-value-type"] == "int16" else "<f4")
        v = float(arr[(i % 512) * int(h["x-columns"]) + 256]) * float(h["x-rescale-slope"]) \
            + float(h["x-rescale-intercept"])
    lookup_us = (time.perf_counter() - t0) * 1000   # per lookup, µs (1000 of them, in ms)
    return {"hu_first_never_viewed_ms": round(statistics.median(t_never), 1),
            "hu_first_after_image_ms": round(statistics.median(t_shown), 1),
            "hu_never_viewed_ms": [round(x) for x in t_never],
            "hu_after_image_ms": [round(x) for x in t_shown],
            "hu_lookup_cached_us": round(lookup_us, 2), "hu_sample_value": round(v, 1)}


def first_3d(br: Browser, base: str) -> dict:
    t0 = time.perf_counter()
    br.get(f"{base}/mip?yaw=30.0&pitch=10.0&size=256&window=40,400&quality=60")
    t_prev = time.perf_counter() - t0
    time.sleep(max(0.0, 0.25 - t_prev))      # MipView's pause before the full size
    br.get(f"{base}/mip?yaw=30.0&pitch=10.0&size=512&window=40,400&quality=85")
    return {"first_3d_s": round(t_prev, 3), "first_3d_full_s": round(time.perf_counter() - t0, 3)}


def after_release(br: Browser, base: str, n: int) -> dict:
    mip = [br.get(f"{base}/mip?yaw={40 + 7 * i}.0&pitch={5 + i}.0&size=512&window=40,400"
                  f"&quality=85") for i in range(n)]
    vr = {p: [br.get(f"{base}/mip?yaw={41 + 7 * i}.0&pitch={6 + i}.0&size=512&mode=vr"
                     f"&preset={p}&quality=85") for i in range(n)] for p in PRESETS}
    all_vr = [x for v in vr.values() for x in v]
    return {"mip_512_ms": [round(x) for x in mip],
            "vr_512_ms": {p: [round(x) for x in v] for p, v in vr.items()},
            "mip_512_after_release_ms": round(statistics.median(mip)),
            "vr_512_after_release_ms": round(statistics.median(all_vr)),
            "vr_512_median_by_preset_ms": {p: round(statistics.median(v)) for p, v in vr.items()}}


def drag(br: Browser, base: str, seconds: float, extra: str) -> float:
    t0 = time.perf_counter()
    n = 0
    yaw = 100.0
    while time.perf_counter() - t0 < seconds:
        yaw = (yaw + 3.1 + 180.0) % 360.0 - 180.0      # as MipView wraps it
        br.get(f"{base}/mip?yaw={yaw:.1f}&pitch=12.0&size=256&quality=60{extra}")
        n += 1
    return round(n / (time.perf_counter() - t0), 1)


def oblique_http(br: Browser, base: str, n: int) -> list[float]:
    return [br.get(f"{base}/mpr/oblique?yaw={10 + 3 * i}&pitch={5 + 2 * i}&viewport=512,512"
                   f"&window=40,400&quality=85") for i in range(n)]


def in_process(n_slices: int, reps: int) -> dict:
    """The kernels alone on the phantom (the same HU model as the served series)."""
    import numpy as np

    from bench.lib.phantom import phantom_hu
    from render.decode import Window
    from render.volume import mip_projection, mpr_image, volume_from_array
    from render.vr import vr_projection, warm_up_kernels
    data = np.stack([phantom_hu(k, n_slices) for k in range(n_slices)]).astype(np.int16)
    vol = volume_from_array(data, (1.25, 0.7, 0.7), window=Window(40.0, 400.0))
    warm_up_kernels()
    mpr_image(vol, "oblique", yaw=1, pitch=1)

    cpu = {}

    def ms(fn, name=None):
        t, c = [], []
        for i in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            fn(i)
            t.append((time.perf_counter() - t0) * 1000)
            c.append((time.process_time() - c0) * 1000)
        if name:
            cpu[name] = round(statistics.median(c), 1)
        return round(statistics.median(t), 1)
    t0 = time.perf_counter()
    vr_projection(vol, 0, 0, 64, preset="bone", fixed_scale=False)  # block min/max, once
    out = {"vr_first_call_ms": round((time.perf_counter() - t0) * 1000)}
    out["mip_512_ms"] = ms(lambda i: mip_projection(vol, 30 + 5 * i, 10, 512), "mip_512")
    out["mip_256_ms"] = ms(lambda i: mip_projection(vol, 30 + 5 * i, 10, 256), "mip_256")
    for p in PRESETS:
        out[f"vr_{p}_512_ms"] = ms(lambda i: vr_projection(vol, 30 + 5 * i, 10, 512, preset=p),
                                   f"vr_{p}_512")
        out[f"vr_{p}_256_ms"] = ms(lambda i: vr_projection(vol, 30 + 5 * i, 10, 256, preset=p),
                                   f"vr_{p}_256")
    out["oblique_kernel_ms"] = ms(lambda i: mpr_image(vol, "oblique", yaw=10 + 3 * i,
                                                      pitch=5 + 2 * i), "oblique")
    out["cpu_ms_all_threads"] = cpu   # CPU time of every thread: less hurt by other load
    out["volume_shape"] = list(vol.shape)
    out["loadavg"] = os.getloadavg()[0]
    return out


def verdict(name: str, value) -> str:
    if name not in TARGETS or value is None:
        return ""
    target, op, _ = TARGETS[name]
    ok = value <= target if op == "<=" else value >= target
    return "pass" if ok else "FAIL"


def write_results(res: dict, argv: list[str]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"volume_{stamp}"
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    m = res["meta"]
    lines = [f"# Volume bench {stamp}", "", f"`{m['command']}`", "",
             f"Never-viewed {m['slices']}×512² CT (uncompressed, 0.7 mm pixels, 1.25 mm "
             f"slices), {m['processes']} server processes, {m['cpus']} cores shared with the "
             f"client; load average {m['loadavg_before']:.2f} before, "
             f"{m['loadavg_after']:.2f} after.", "",
             "| figure | value | target | |", "|---|---:|---:|---|"]
    for name, label in LABELS.items():
        v = res["figures"].get(name)
        t = TARGETS.get(name)
        unit = t[2] if t else ("ms" if name.endswith("_ms") else
                               "µs" if name.endswith("_us") else "s")
        tt = f"{t[1]} {t[0]:g} {t[2]}" if t else ""
        lines.append(f"| {label} | {v} {unit} | {tt} | {verdict(name, v)} |")
    lines += ["", "Details: MPR " + json.dumps(res["mpr"]) + "; HU at the pointer "
              + json.dumps(res["hu"]) + "; 3D after release "
              + json.dumps(res["release"]) + "; in process (kernel only, no JPEG) "
              + json.dumps(res["in_process"])]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=220)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--angles", type=int, default=4, help="new angles per 512-px figure")
    ap.add_argument("--drag-s", type=float, default=3.0, help="seconds of each drag")
    ap.add_argument("--data-dir", default="/tmp/cfbench-data")
    ap.add_argument("--no-in-process", action="store_true")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    m = make_series(Path(a.data_dir) / f"vol{a.slices}", a.slices, compressed=False,
                    name=f"vol{a.slices}", series_number=98)
    base = f"/api/render/studies/{m['study_uid']}/series/{m['series_uid']}"
    work = Path(tempfile.mkdtemp(prefix="cfvol-"))
    res = {"meta": {"command": "PYTHONPATH=. .venv/bin/python -m bench.volume_bench "
                    + " ".join(argv), "slices": a.slices, "processes": a.processes,
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": os.getloadavg()[0]}}
    srv = CloudFilmServer(work, processes=a.processes)
    try:
        log("importing …")
        srv.import_paths([Path(m["files"][0]).parent])
        token = srv.provision_token()
        srv.start()
        log("MPR triple, never viewed …")
        br = Browser(srv.base, token)
        res["mpr"] = mpr_triple(br, base)
        br.close()
        srv.restart()
        log("first 3D view, never viewed …")
        br = Browser(srv.base, token)
        res["first_3d"] = first_3d(br, base)
        log("after releasing a rotation …")
        res["release"] = after_release(br, base, a.angles)
        log("dragging …")
        drag_mip = drag(br, base, a.drag_s, "&window=40,400")
        drag_vr = drag(br, base, a.drag_s, "&mode=vr&preset=bone")
        obl = oblique_http(br, base, 8)
        br.close()
        srv.restart()
        log("HU at the pointer …")
        br = Browser(srv.base, token)
        res["hu"] = hu_values(br, base, m["sop_uids"])
        br.close()
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    ip = {} if a.no_in_process else (log("in process …") or in_process(a.slices, 3))
    fig = {
        "mpr_triple_any_s": res["mpr"]["mpr_triple_any_s"],
        "mpr_triple_full_s": res["mpr"]["mpr_triple_full_s"],
        "first_3d_s": res["first_3d"]["first_3d_s"],
        "first_3d_full_s": res["first_3d"]["first_3d_full_s"],
        "mip_512_after_release_ms": res["release"]["mip_512_after_release_ms"],
        "vr_512_after_release_ms": res["release"]["vr_512_after_release_ms"],
        "drag_mip_256_img_per_s": drag_mip,
        "drag_vr_256_img_per_s": drag_vr,
        "oblique_http_ms": round(statistics.median(obl)),
        "oblique_kernel_ms": ip.get("oblique_kernel_ms"),
        "hu_first_never_viewed_ms": res["hu"]["hu_first_never_viewed_ms"],
        "hu_first_after_image_ms": res["hu"]["hu_first_after_image_ms"],
        "hu_lookup_cached_us": res["hu"]["hu_lookup_cached_us"],
    }
    res["figures"] = fig
    res["in_process"] = ip
    res["meta"]["loadavg_after"] = os.getloadavg()[0]
    res["meta"]["wall_s"] = round(time.perf_counter() - t_start, 1)
    out = write_results(res, argv)
    log(f"results: {out}.md")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
