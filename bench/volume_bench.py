"""Volume bench (issue 18): MPR, 3D MIP and volume rendering of a never-viewed 220×512² CT.

    PYTHONPATH=. .venv/bin/python -m bench.volume_bench             # ≈ 1–1.5 min on 2 cores

One run against our server started from this working tree (scratch database and storage,
`--processes` server processes, 2 by default like production), with the viewer's own
requests, over keep-alive connections like a browser's:

  * MPR triple: a fresh server (nothing decoded, no volume), then what MprSet does: GET
    /volume, then the three planes (viewport 512², q85) and their geometry in parallel.
    "any quality" is when every pane shows an image, "full" when every pane shows its full
    quality one (the viewer asks full quality at once today, so the two are the same).
  * first 3D view: the server restarted again (never viewed), then what MipView does on the
    3D button: a 256-px preview MIP, and the 512-px one 250 ms later.
  * after releasing a rotation: MIP and VR (each preset) at 512 px, new angles (uncached).
  * during a drag: 256-px images one at a time (the viewer's busy flag), new angles for
    `--drag-s` seconds: images/s, MIP and VR (bone).
  * oblique plane: HTTP latency of a 512² oblique MPR at new angles, and in this process the
    plane's kernel alone (`mpr_image(..., 'oblique')`) on the same phantom.
  * in-process kernels on the phantom volume (no HTTP, no JPEG): MIP / VR at 512 and 256 px.
  * HU at the pointer: skipped, the server has no endpoint for it (noted in the results).

The load average is recorded before and after. Results: bench/results/volume_<date>.json and
.md (with the command).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
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
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Browser:
    """A few keep-alive connections (a browser's per-host pool); each request's ms."""

    def __init__(self, base: str, token: str | None, n: int = 6):
        h = {"Authorization": f"Bearer {token}"} if token else {}
        self.clients = [Client(base, h) for _ in range(n)]
        self.pool = ThreadPoolExecutor(n)

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


def mpr_triple(br: Browser, base: str) -> dict:
    t0 = time.perf_counter()
    br.get(f"{base}/volume")
    t_vol = (time.perf_counter() - t0) * 1000
    q = "viewport=512,512&window=40,400&quality=85"
    paths = [f"{base}/mpr/{p}?{q}" for p in ("axial", "coronal", "sagittal")]
    paths += [f"{base}/mpr/{p}/geometry?viewport=512,512" for p in ("axial", "coronal", "sagittal")]
    done = br.parallel(paths)
    planes = [t_vol + d for d in done[:3]]
    total = (time.perf_counter() - t0)
    return {"volume_ms": round(t_vol), "planes_ms": [round(x) for x in planes],
            "mpr_triple_any_s": round(max(planes) / 1000, 3),
            "mpr_triple_full_s": round(max(planes) / 1000, 3),
            "with_geometry_s": round(total, 3)}


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
        unit = t[2] if t else ("ms" if name.endswith("_ms") else "s")
        tt = f"{t[1]} {t[0]:g} {t[2]}" if t else ""
        lines.append(f"| {label} | {v} {unit} | {tt} | {verdict(name, v)} |")
    lines += ["", "HU at the pointer: skipped, the server has no endpoint for it (the viewer "
              "has none either).", "",
              "Details: MPR " + json.dumps(res["mpr"]) + "; 3D after release "
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
