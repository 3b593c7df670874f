"""Side-by-side render benchmark: CloudFilm vs Orthanc (see bench/README.md).

    sudo .venv/bin/python -m bench.render_bench [--quick] [--out bench/results]

One run measures, on the same generated files imported into both servers:
  * warm single CT frame (window 40/400, JPEG q85): 1-client median latency, 8-client frames/s
    (ours: DICOMweb rendered; Orthanc: its core /instances/{id}/frames/0/rendered and DICOMweb)
  * a never-seen 300-slice JPEG 2000 lossless series scrolled once with 8 parallel requests
    (both servers restarted first), and the first frame of it on our server
  * the naive pydicom + Pillow pipeline vs our render_frame + encode_jpeg, in-process
  * MPR / MIP in-process figures (render/volume.py)
  * /healthz latency while 8 clients hammer uncached renders
  * RSS of our server processes after rendering every frame twice vs decoded_cache_mb
It writes render_bench.json, render_bench.md and render_bench.png to --out.
Needs root (apt-get for the peer, ip netns). Our server and Orthanc are stopped at the end.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.lib.cloudfilm import ROOT, CloudFilmServer, rss_mb
from bench.lib.phantom import make_series
from bench.lib.wrk import run_wrk
from bench.orthanc_peer import OrthancPeer, ensure_installed, orthanc_version

WINDOW_Q = "window=40,400,linear&quality=85"
JPEG = {"Accept": "image/jpeg"}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def med(xs):
    return float(statistics.median(xs)) if xs else float("nan")


def pct(xs, q):
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


# ------------------------------------------------------------------------------- paths
def ours_path(m: dict, k: int, extra: str = "") -> str:
    return (f"/dicomweb/studies/{m['study_uid']}/series/{m['series_uid']}/instances/"
            f"{m['sop_uids'][k]}/frames/1/rendered?{WINDOW_Q}{extra}")


def orthanc_core_path(oid: str) -> str:
    return f"/instances/{oid}/frames/0/rendered?window-center=40&window-width=400&quality=85"


def orthanc_dw_path(m: dict, k: int) -> str:
    return (f"/dicom-web/studies/{m['study_uid']}/series/{m['series_uid']}/instances/"
            f"{m['sop_uids'][k]}/frames/1/rendered?{WINDOW_Q}")


# ------------------------------------------------------------------------------- clients
class Runner:
    """Runs bench.lib.httpclient in our namespace (ours) or in the peer's (Orthanc)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.n = 0
        self.ours_auth: list[str] = []       # ["--header", "Authorization: Bearer …"]

    def paths_file(self, paths: list[str]) -> str:
        self.n += 1
        f = self.tmp / f"paths{self.n}.txt"
        f.write_text("\n".join(paths))
        return str(f)

    def ours(self, base: str, mode: str, *args: str) -> dict:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        r = subprocess.run([sys.executable, "-m", "bench.lib.httpclient", mode, "--base", base,
                            *args, *self.ours_auth], capture_output=True, text=True, env=env,
                           timeout=1800)
        if r.returncode:
            raise RuntimeError(f"client {mode}: {r.stderr[-2000:]}")
        return json.loads(r.stdout)


def latency(run: Runner, call, paths: list[str], n: int, warmup: int = 30) -> dict:
    r = call("latency", "--paths-file", run.paths_file(paths), "-n", str(n),
             "--warmup", str(warmup), "--header", "Accept: image/jpeg")
    if r["errors"]:
        raise RuntimeError(f"{r['errors']} non-200 answers in a latency run")
    return {"median_ms": med(r["ms"]), "p90_ms": pct(r["ms"], 90), "p99_ms": pct(r["ms"], 99),
            "n": n, "mean_bytes": r["mean_bytes"]}


def scroll(run: Runner, call, paths: list[str], conc: int = 8) -> dict:
    r = call("scroll", "--paths-file", run.paths_file(paths), "--concurrency", str(conc),
             "--header", "Accept: image/jpeg")
    if r["errors"]:
        raise RuntimeError(f"{r['errors']} non-200 answers in a scroll")
    return {"fps": r["fps"], "wall_s": r["wall_s"], "n": r["n"],
            "median_ms": med(r["ms"]), "p99_ms": pct(r["ms"], 99)}


def warm_connections(run: Runner, call, paths: list[str], k: int = 16) -> None:
    """Open k fresh connections (so both SO_REUSEPORT workers get some) and render a frame."""
    for i in range(k):
        call("latency", "--paths-file", run.paths_file([paths[i % len(paths)]]), "-n", "1",
             "--warmup", "0", "--header", "Accept: image/jpeg")


def wrk_summary(r: dict) -> dict:
    if r["errors"] > max(10, r["requests"] // 1000):
        raise RuntimeError(f"wrk: {r['errors']} errors / non-2xx answers of {r['requests']}")
    if r["errors"]:
        log(f"  wrk reported {r['errors']} errors: {r}")
    return {"fps": r["rps"], "requests": r["requests"], "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000, "errors": r["errors"]}


# ------------------------------------------------------------------------------- in-process
def inprocess(ct: dict, j2k: dict, quick: bool) -> dict:
    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    from render.decode import load_image
    from render.encode import encode_jpeg
    from render.pipeline import render_frame

    files = ct["files"][: (8 if quick else 32)]
    reps = 2 if quick else 3

    def naive_file(path):
        ds = pydicom.dcmread(path)
        arr = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
        lo, hi = float(arr.min()), float(arr.max())
        # apply_voi_lut returns 0..2^BitsStored-1 for a window: scale to 8 bits
        bits = int(ds.BitsStored)
        u8 = np.clip(arr / ((1 << bits) - 1) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        del lo, hi
        buf = io.BytesIO()
        Image.fromarray(u8).save(buf, "JPEG", quality=85)
        return buf.getvalue()

    def ours_file(path):
        img = load_image(path)
        return encode_jpeg(render_frame(img, 0, window=(40, 400, "LINEAR"),
                                        viewport=(512, 512)), 85)

    def per_frame(fn, items):
        fn(items[0])
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            for it in items:
                fn(it)
            best = min(best, (time.perf_counter() - t0) / len(items) * 1000)
        return best

    out = {"frames": len(files)}
    out["naive_file_ms"] = per_frame(naive_file, files)
    out["ours_file_ms"] = per_frame(ours_file, files)
    # warm: pixels already decoded; only LUTs + 8-bit + JPEG
    dss = [pydicom.dcmread(f) for f in files]
    arrs = [(d, d.pixel_array) for d in dss]

    def naive_warm(item):
        ds, px = item
        arr = apply_voi_lut(apply_modality_lut(px, ds), ds)
        u8 = np.clip(arr / ((1 << int(ds.BitsStored)) - 1) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(u8).save(buf, "JPEG", quality=85)
        return buf.getvalue()

    imgs = [load_image(f) for f in files]

    def ours_warm(img):
        return encode_jpeg(render_frame(img, 0, window=(40, 400, "LINEAR"),
                                        viewport=(512, 512)), 85)

    def ours_kernel(img):
        return render_frame(img, 0, window=(40, 400, "LINEAR"), viewport=(512, 512))

    out["naive_warm_ms"] = per_frame(naive_warm, arrs)
    out["ours_warm_ms"] = per_frame(ours_warm, imgs)
    out["ours_kernel_ms"] = per_frame(ours_kernel, imgs)
    jfiles = j2k["files"][: (4 if quick else 12)]
    out["j2k_decode_ms"] = per_frame(load_image, jfiles)

    # MPR / MIP (render/volume.py), on the CT series
    try:
        from render.volume import build_volume, mip_projection, mpr_plane
    except ImportError as exc:
        out["mpr"] = {"error": f"render/volume.py not available: {exc}"}
        return out
    vol_imgs = [load_image(f) for f in ct["files"]]
    t0 = time.perf_counter()
    vol = build_volume(vol_imgs)
    build_ms = (time.perf_counter() - t0) * 1000
    mpr = {"slices": len(vol_imgs), "build_volume_ms": build_ms}
    n = 5 if quick else 20
    cases = {
        "axial": dict(plane="axial"),
        "coronal": dict(plane="coronal"),
        "sagittal": dict(plane="sagittal"),
        "oblique_yaw30_pitch20": dict(plane="oblique", yaw=30.0, pitch=20.0),
        "coronal_slab10mm_mip": dict(plane="coronal", slab_mm=10.0, slab_mode="mip"),
    }
    for name, kw in cases.items():
        plane = kw.pop("plane")

        def f(_=None, plane=plane, kw=kw):
            return mpr_plane(vol, plane, window=(40, 400), viewport=(512, 512), **kw)
        f()
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            arr = f()
            ts.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        encode_jpeg(arr, 85)
        mpr[f"{name}_ms"] = med(ts)
        mpr[f"{name}_with_jpeg_ms"] = med(ts) + (time.perf_counter() - t0) * 1000
    for size in (256, 512):
        mip_projection(vol, 30.0, 10.0, size, window=(40, 400))
        ts = []
        for i in range(max(3, n // 2)):
            t0 = time.perf_counter()
            mip_projection(vol, 10.0 * i, 10.0, size, window=(40, 400))
            ts.append((time.perf_counter() - t0) * 1000)
        mpr[f"mip3d_{size}_ms"] = med(ts)
    out["mpr"] = mpr
    return out


# ------------------------------------------------------------------------------- load + probe
def probe_under_load(probe_call, load_fn, duration: float) -> tuple[dict, dict]:
    """Run load_fn() (wrk) in a thread while probe_call measures latency."""
    box = {}

    def go():
        box["load"] = load_fn()
    t = threading.Thread(target=go)
    t.start()
    time.sleep(1.0)       # let the load ramp up
    pr = probe_call(duration - 2.0)
    t.join()
    return pr, box["load"]


# ------------------------------------------------------------------------------- main
def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "mem_mb": mem,
            "kernel": platform.release(), "python": platform.python_version()}


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--short", "--", "server", "render",
                                "models", "adapters"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip().splitlines()
        return rev + (f" + {len(dirty)} uncommitted server/render/models/adapters files"
                      if dirty else "")
    except OSError:
        return "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer slices, shorter runs (smoke)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--data-dir", default="/tmp/cfbench-data",
                    help="generated series are kept here and reused (deterministic)")
    ap.add_argument("--duration", type=float, help="seconds per throughput run (default 10)")
    ap.add_argument("--processes", type=int, default=2, help="our server's worker processes")
    ap.add_argument("--repeats", type=int, default=2,
                    help="warm figures: ours/Orthanc interleaved this many times, best kept")
    ap.add_argument("--cache-mb", type=int, default=96,
                    help="decoded_cache_mb for the memory test (smaller than the data)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: the peer is installed with apt-get and runs in a "
                         "network namespace (ip netns)")
    quick = a.quick
    dur = a.duration or (4.0 if quick else 10.0)
    n_ct = 24 if quick else 64
    n_j2k = 60 if quick else 300
    n_lat = 100 if quick else 500
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = "sudo .venv/bin/python -m bench.render_bench " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    R: dict = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
               "command": cmd.strip(), "machine": machine(), "git": git_rev(),
               "quick": quick, "duration_s": dur, "processes": a.processes,
               "repeats": a.repeats}
    ensure_installed(log)
    R["peer"] = orthanc_version()

    log(f"generating data in {a.data_dir} (CT {n_ct} slices, J2K {n_j2k} slices) …")
    t0 = time.perf_counter()
    ct = make_series(Path(a.data_dir) / f"ct{n_ct}", n_ct, compressed=False, name=f"ct{n_ct}",
                     series_number=1)
    j2k = make_series(Path(a.data_dir) / f"j2k{n_j2k}", n_j2k, compressed=True,
                      name=f"j2k{n_j2k}", series_number=2)
    R["data"] = {"ct": {"slices": n_ct, "bytes": ct["bytes"], "ts": ct["transfer_syntax"]},
                 "j2k": {"slices": n_j2k, "bytes": j2k["bytes"], "ts": j2k["transfer_syntax"]},
                 "generate_s": time.perf_counter() - t0}

    log("in-process: naive pydicom+Pillow vs render_frame+encode_jpeg, MPR/MIP …")
    R["inprocess"] = inprocess(ct, j2k, quick)
    log(f"  {json.dumps(R['inprocess'])[:400]}")

    tmp = Path(tempfile.mkdtemp(prefix="cfbench-"))
    run = Runner(tmp)
    ours = CloudFilmServer(tmp / "cloudfilm", processes=a.processes)
    peer = OrthancPeer(log=log)
    try:
        with peer:
            body(R, a, quick, dur, n_lat, ct, j2k, ours, peer, run)
    finally:
        ours.stop()
        peer.stop()
        subprocess.run(["rm", "-rf", str(tmp)])
    R["load_after"] = os.getloadavg()
    write_results(R, out_dir)
    return 0


def body(R, a, quick, dur, n_lat, ct, j2k, ours, peer, run):
    O = lambda mode, *args: run.ours(ours.base, mode, *args)  # noqa: E731
    P = lambda mode, *args: peer.client(mode, *args)  # noqa: E731
    W_ours = lambda paths, **kw: run_wrk(ours.base, paths, headers=ours_h,  # noqa: E731
                                         duration=dur, **kw)
    W_peer = lambda paths, **kw: run_wrk(peer.base, paths, headers=JPEG,  # noqa: E731
                                         duration=dur, prefix=peer.prefix, **kw)

    ours_h = dict(JPEG)
    token = ours.provision_token()
    R["ours_auth"] = "staff API token (Authorization: Bearer)" if token else "none"
    if token:
        ours_h["Authorization"] = f"Bearer {token}"
        run.ours_auth = ["--header", f"Authorization: Bearer {token}"]

    # ---- store the same files in both -------------------------------------------------
    log("storing: Orthanc POST /instances, ours ./run.sh import …")
    up_ct = peer.upload(ct["files"])
    up_j2k = peer.upload(j2k["files"])
    oid_ct, oid_j2k = up_ct["ids"], up_j2k["ids"]
    imp_ct = ours.import_paths(ct["files"])
    imp_j2k = ours.import_paths(j2k["files"])
    R["store"] = {"orthanc_ct_s": up_ct["wall_s"], "orthanc_j2k_s": up_j2k["wall_s"],
                  "ours_ct_s": imp_ct["wall_s"], "ours_j2k_s": imp_j2k["wall_s"],
                  "ours_j2k_summary": imp_j2k["summary"]}
    derived = list((ours.work / "data").rglob("derived/**/*.dcm"))
    R["store"]["ours_fast_copies"] = len(derived)
    log(f"  {json.dumps(R['store'])[:300]}")

    ours.start()
    R["load_before"] = os.getloadavg()
    n_ct = len(ct["files"])
    mid = n_ct // 2
    P_ct = [ours_path(ct, k) for k in range(n_ct)]
    O_core = [orthanc_core_path(o) for o in oid_ct]
    O_dw = [orthanc_dw_path(ct, k) for k in range(n_ct)]

    # ---- warm single CT frame ---------------------------------------------------------------
    warm = {}
    log("first render request after our server started (lazy imports, numba cache load) …")
    warm["ours_first_request_after_start"] = latency(run, O, [P_ct[0]], 1, warmup=0)
    warm_connections(run, O, P_ct)     # every worker has imported and rendered once
    warm_connections(run, P, O_core, k=2)
    log("warm single CT frame: 1-client latency …")
    # A/B interleaved, best of --repeats: other load on the machine hits both sides alike
    for _ in range(a.repeats):
        for key, call, path in (("ours_1c", O, P_ct[mid]), ("orthanc_core_1c", P, O_core[mid]),
                                ("orthanc_dw_1c", P, O_dw[mid])):
            r = latency(run, call, [path], n_lat)
            if key not in warm or r["median_ms"] < warm[key]["median_ms"]:
                warm[key] = r
    log("warm single CT frame: 8 clients (wrk) …")
    for _ in range(a.repeats):
        for key, fn in (("ours_8c", lambda: W_ours([P_ct[mid]])),
                        ("orthanc_core_8c", lambda: W_peer([O_core[mid]])),
                        ("orthanc_dw_8c", lambda: W_peer([O_dw[mid]]))):
            r = wrk_summary(fn())
            if key not in warm or r["fps"] > warm[key]["fps"]:
                warm[key] = r
    log("JPEG-cached frame requested again after 1.5 s idle vs at once …")
    idle_paths = P_ct[: (5 if quick else 12)]
    r1 = run.ours(ours.base, "latency", "--paths-file", run.paths_file(idle_paths), "-n",
                  str(len(idle_paths)), "--warmup", str(len(idle_paths)), "--sleep", "1.5",
                  "--header", "Accept: image/jpeg")
    r0 = run.ours(ours.base, "latency", "--paths-file", run.paths_file(idle_paths), "-n",
                  str(len(idle_paths) * 5), "--warmup", str(len(idle_paths)),
                  "--header", "Accept: image/jpeg")
    warm["ours_cached_after_idle"] = {"median_ms": med(r1["ms"]), "n": len(r1["ms"])}
    warm["ours_cached_at_once"] = {"median_ms": med(r0["ms"]), "n": len(r0["ms"])}
    log("warm CT series cycle (every slice already rendered once): 8 clients …")
    for _ in range(a.repeats):
        for key, fn in (("ours_cycle_8c", lambda: W_ours(P_ct)),
                        ("orthanc_core_cycle_8c", lambda: W_peer(O_core))):
            r = wrk_summary(fn())
            if key not in warm or r["fps"] > warm[key]["fps"]:
                warm[key] = r
    log("uncached renders (random viewport per request, CT): 8 clients …")
    warm["ours_uncached_8c"] = wrk_summary(W_ours(P_ct, random_viewport=True))
    R["warm"] = warm
    log(f"  {json.dumps(warm)[:600]}")

    # ---- /healthz under heavy load (ours) and /system (Orthanc) -------------------------
    log("/healthz while 8 clients render uncached viewports …")
    hz = {}

    def probe_ours(d):
        return O("probe", "--path", "/healthz", "--duration", str(d), "--interval", "0.02")

    def probe_peer(d):
        return P("probe", "--path", "/system", "--duration", str(d), "--interval", "0.02")
    pr, load = probe_under_load(probe_ours, lambda: W_ours(P_ct, random_viewport=True), dur)
    hz["ours_ct_uncached"] = {"median_ms": med(pr["ms"]), "p99_ms": pct(pr["ms"], 99),
                              "max_ms": max(pr["ms"]), "n": len(pr["ms"]),
                              "load": wrk_summary(load)}
    pr, load = probe_under_load(probe_peer, lambda: W_peer(O_core + O_dw), dur)
    hz["orthanc_system_core_cycle"] = {"median_ms": med(pr["ms"]), "p99_ms": pct(pr["ms"], 99),
                                       "max_ms": max(pr["ms"]), "n": len(pr["ms"]),
                                       "load": wrk_summary(load)}
    R["healthz"] = hz
    log(f"  {json.dumps(hz)[:600]}")

    # ---- cold J2K ------------------------------------------------------------------------
    P_j = [ours_path(j2k, k) for k in range(len(j2k["files"]))]
    O_j = [orthanc_core_path(o) for o in oid_j2k]
    cold = {}
    log("cold J2K: first frame of the never-seen series …")
    ours.restart()
    warm_connections(run, O, P_ct)
    cold["ours_first_frame"] = latency(run, O, [P_j[0]], 1, warmup=0)
    peer.restart()
    warm_connections(run, P, O_core, k=2)
    cold["orthanc_first_frame"] = latency(run, P, [O_j[0]], 1, warmup=0)
    log("cold J2K: scroll front to back, 8 parallel, both servers restarted …")
    ours.restart()
    warm_connections(run, O, P_ct)
    cold["ours_scroll"] = scroll(run, O, P_j)
    peer.restart()
    warm_connections(run, P, O_core, k=2)
    cold["orthanc_scroll"] = scroll(run, P, O_j)
    log("  second scroll (decoded, JPEG-cached on ours) …")
    cold["ours_scroll2"] = scroll(run, O, P_j)
    cold["orthanc_scroll2"] = scroll(run, P, O_j)
    derived = [d for d in (ours.work / "data").rglob("derived") if d.is_dir()]
    if derived:
        log("cold J2K without the native copies made at import (originals decoded) …")
        ours.stop()
        for d in derived:
            d.rename(d.with_name("derived.off"))
        try:
            ours.start()
            warm_connections(run, O, P_ct)
            cold["ours_scroll_originals"] = scroll(run, O, P_j)
        finally:
            ours.stop()
            for d in derived:
                if d.exists():          # made again at start-up (empty) or by the server
                    cold["ours_scroll_originals"]["derived_files_made_meanwhile"] = sum(
                        1 for _ in d.rglob("*.dcm")) if "ours_scroll_originals" in cold else -1
                    shutil.rmtree(d)
                d.with_name("derived.off").rename(d)
            ours.start()
    R["cold"] = cold
    log(f"  {json.dumps(cold)[:600]}")

    log("/healthz while 8 clients render never-seen J2K frames (random viewports) …")
    ours.restart()
    warm_connections(run, O, P_ct)
    pr, load = probe_under_load(probe_ours, lambda: W_ours(P_j, random_viewport=True), dur)
    hz["ours_j2k_cold"] = {"median_ms": med(pr["ms"]), "p99_ms": pct(pr["ms"], 99),
                           "max_ms": max(pr["ms"]), "n": len(pr["ms"]),
                           "load": wrk_summary(load)}
    log(f"  {json.dumps(hz['ours_j2k_cold'])}")

    # ---- memory ----------------------------------------------------------------------------
    log(f"memory: decoded_cache_mb={a.cache_mb}, every frame of every series twice …")
    ours.restart(CLOUDFILM_DECODED_CACHE_MB=a.cache_mb)
    warm_connections(run, O, P_ct)
    base_rss = ours.rss()
    allp = P_ct + P_j
    for _ in range(2):
        scroll(run, O, allp)
    after = ours.rss()
    workers = ours.workers()
    decoded_mb = (len(ct["files"]) + len(j2k["files"])) * 512 * 512 * 2 / 2**20
    R["memory"] = {
        "decoded_cache_mb": a.cache_mb, "jpeg_cache_mb_default": 256,
        "decoded_data_mb": decoded_mb,
        "rss_before_mb": {str(k): v for k, v in base_rss.items()},
        "rss_after_mb": {str(k): v for k, v in after.items()},
        "workers": workers,
        "max_worker_growth_mb": max((after.get(w, 0) - base_rss.get(w, 0) for w in workers),
                                    default=0.0),
        "max_worker_rss_mb": max((after.get(w, 0) for w in workers), default=0.0),
        "total_rss_mb": sum(after.values()),
        "orthanc_rss_mb": sum(rss_mb(p) for p in peer.pids()),
    }
    log(f"  {json.dumps(R['memory'])}")
    ours.stop()


# ------------------------------------------------------------------------------- results
def figures(R: dict) -> list[dict]:
    F = []

    def add(name, ours, peer, unit, better, target=None, target_text="", peer_name="Orthanc",
            passed=None):
        ratio = None
        if peer is not None and ours:
            ratio = ours / peer if better == "higher" else peer / ours
        if passed is None and target is not None and ratio is not None:
            passed = ratio >= target
        F.append({"name": name, "ours": ours, "peer": peer, "peer_name": peer_name,
                  "unit": unit, "better": better, "ratio": ratio,
                  "target": target_text, "pass": passed})

    w = R.get("warm", {})
    if w:
        add("First render request after our server started",
            w["ours_first_request_after_start"]["median_ms"], None, "ms", "lower", None,
            "(info)", "—")
        add("Warm CT frame, 1 client, median latency", w["ours_1c"]["median_ms"],
            w["orthanc_core_1c"]["median_ms"], "ms", "lower", 2.0, "ours ≤ ½ Orthanc",
            "Orthanc core /frames/0/rendered")
        add("Warm CT frame, 1 client, median latency (vs Orthanc DICOMweb)",
            w["ours_1c"]["median_ms"], w["orthanc_dw_1c"]["median_ms"], "ms", "lower", 2.0,
            "ours ≤ ½ Orthanc", "Orthanc DICOMweb /rendered")
        add("Warm CT frame, 8 clients, frames/s", w["ours_8c"]["fps"],
            w["orthanc_core_8c"]["fps"], "frames/s", "higher", 3.0, "≥ 3×",
            "Orthanc core /frames/0/rendered")
        add("Warm CT frame, 8 clients, frames/s (vs Orthanc DICOMweb)", w["ours_8c"]["fps"],
            w["orthanc_dw_8c"]["fps"], "frames/s", "higher", 3.0, "≥ 3×",
            "Orthanc DICOMweb /rendered")
        if "ours_cached_after_idle" in w:
            add("JPEG-cached frame, 1 request after 1.5 s idle (instance lookup expired) vs "
                "the same right away", w["ours_cached_after_idle"]["median_ms"],
                w["ours_cached_at_once"]["median_ms"], "ms", "lower", None,
                "(info: ratio < 1 = the idle request is slower)", "ours, right away")
        add("Warm CT series cycled (all slices), 8 clients, frames/s",
            w["ours_cycle_8c"]["fps"], w["orthanc_core_cycle_8c"]["fps"], "frames/s",
            "higher", None, "(info)", "Orthanc core /frames/0/rendered")
        add("Uncached renders (random viewport ≤ 512), 8 clients, frames/s",
            w["ours_uncached_8c"]["fps"], w["orthanc_core_cycle_8c"]["fps"], "frames/s",
            "higher", None, "(info: Orthanc re-encodes every request anyway)",
            "Orthanc core, slices cycled")
    c = R.get("cold", {})
    if c:
        add(f"Never-seen J2K series ({R['data']['j2k']['slices']} slices) scrolled once, "
            "8 parallel, frames/s", c["ours_scroll"]["fps"], c["orthanc_scroll"]["fps"],
            "frames/s", "higher", 2.0, "≥ 2×", "Orthanc core /frames/0/rendered")
        if "ours_scroll_originals" in c:
            add("Never-seen J2K series scrolled once, native copies removed (J2K decoded "
                "per request), 8 parallel, frames/s", c["ours_scroll_originals"]["fps"],
                c["orthanc_scroll"]["fps"], "frames/s", "higher", 2.0, "≥ 2× (info)",
                "Orthanc core /frames/0/rendered")
        add("Same J2K series scrolled again (warm), 8 parallel, frames/s",
            c["ours_scroll2"]["fps"], c["orthanc_scroll2"]["fps"], "frames/s", "higher",
            None, "(info)", "Orthanc core /frames/0/rendered")
        add("First frame of never-seen J2K series, latency",
            c["ours_first_frame"]["median_ms"], c["orthanc_first_frame"]["median_ms"], "ms",
            "lower", None, "(info)", "Orthanc core /frames/0/rendered")
    ip = R.get("inprocess", {})
    if ip:
        add("In-process per frame from file (read+decode+window+JPEG)", ip["ours_file_ms"],
            ip["naive_file_ms"], "ms", "lower", None, "(info)",
            "naive pydicom + Pillow")
        add("In-process per frame, pixels already decoded (window+JPEG)", ip["ours_warm_ms"],
            ip["naive_warm_ms"], "ms", "lower", None, "(info)", "naive pydicom + Pillow")
        add("In-process window kernel only (no JPEG)", ip["ours_kernel_ms"], None, "ms",
            "lower", None, "(info)", "—")
        add("In-process J2K lossless decode per slice (load_image)", ip["j2k_decode_ms"], None,
            "ms", "lower", None, "(info)", "—")
        mpr = ip.get("mpr", {})
        for k, v in mpr.items():
            if k.endswith("_ms") and not k.endswith("_with_jpeg_ms"):
                add(f"MPR/MIP in-process: {k[:-3]} ({mpr['slices']} slices, 512 viewport)",
                    v, None, "ms", "lower", None, "(info)", "— (no peer)")
    h = R.get("healthz", {})
    if h:
        for key, label in (("ours_ct_uncached", "uncached CT viewports"),
                           ("ours_j2k_cold", "never-seen J2K frames")):
            o = h.get("orthanc_system_core_cycle")
            pn = "Orthanc /system while 8 clients render (core+DICOMweb, slices cycled)"
            if key in h:
                add(f"/healthz p99 while 8 clients render {label} "
                    f"({h[key]['load']['fps']:.0f} frames/s)", h[key]["p99_ms"],
                    o["p99_ms"] if o else None, "ms", "lower", None, "< 50 ms", pn,
                    passed=h[key]["p99_ms"] < 50)
                add(f"/healthz median while 8 clients render {label}", h[key]["median_ms"],
                    o["median_ms"] if o else None, "ms", "lower", None, "< 50 ms", pn,
                    passed=h[key]["median_ms"] < 50)
    m = R.get("memory")
    if m:
        limit = m["decoded_cache_mb"] + 64
        add(f"RSS growth of the biggest worker after every frame twice "
            f"(decoded_cache_mb={m['decoded_cache_mb']}, data {m['decoded_data_mb']:.0f} MB)",
            m["max_worker_growth_mb"], None, "MB", "lower", None,
            f"≤ budget + 64 MB JPEG/slack = {limit} MB", "—",
            passed=m["max_worker_growth_mb"] <= limit)
        add("RSS of the biggest worker after", m["max_worker_rss_mb"], m["orthanc_rss_mb"],
            "MB", "lower", None, "(info)", "Orthanc process")
    return F


def fmt(v, unit=""):
    if v is None:
        return "—"
    if isinstance(v, float):
        s = f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    else:
        s = str(v)
    return f"{s} {unit}".strip()


def write_results(R: dict, out: Path) -> None:
    R["figures"] = figures(R)
    (out / "render_bench.json").write_text(json.dumps(R, indent=1, ensure_ascii=False))
    m = R["machine"]
    lines = [
        "# CloudFilm vs Orthanc: render benchmark", "",
        f"- date: {R['date']}  (git {R['git']}){'  **--quick smoke run**' if R['quick'] else ''}",
        f"- machine: {m['nproc']} cores, {m['cpu']}, {m['mem_mb']} MB RAM, Linux "
        f"{m['kernel']}, Python {m['python']}",
        f"- peer: {R['peer']} with orthanc-dicomweb and orthanc-gdcm, in a network namespace "
        "with only `lo`; its clients run in that namespace",
        f"- ours: {R['processes']} worker processes (SO_REUSEPORT), auth: "
        f"{R.get('ours_auth', 'none')}; throughput runs "
        f"{R['duration_s']:.0f} s with wrk (1 thread, 8 connections); latency with a "
        f"Python keep-alive client; warm figures: best of {R.get('repeats', 1)} interleaved "
        "ours/Orthanc runs",
        f"- data (generated): CT {R['data']['ct']['slices']}×512² uncompressed, "
        f"J2K lossless {R['data']['j2k']['slices']}×512² "
        f"({R['data']['j2k']['bytes'] / 2**20:.0f} MB); window 40/400, JPEG q85",
        f"- reproduce: `cd /work/main && {R['command']}`",
        f"- load average (1/5/15 min) when our server started: "
        f"{', '.join(f'{x:.2f}' for x in R.get('load_before', ()))}; at the end: "
        f"{', '.join(f'{x:.2f}' for x in R.get('load_after', ()))} (other work on the machine "
        "adds noise)",
        "- **caveat**: the load generator (wrk or the Python client) shares the 2 cores with "
        "the server under test, so absolute figures are lower than on a dedicated client; "
        "compare the ratios from one run (±10% run to run).",
        "",
        "| figure | CloudFilm | peer | peer figure | ratio (× better) | target | pass |",
        "|---|---:|---|---:|---:|---|---|",
    ]
    for f in R["figures"]:
        ratio = "—" if f["ratio"] is None else f"{f['ratio']:.2f}×"
        ok = "—" if f["pass"] is None else ("PASS" if f["pass"] else "**FAIL**")
        lines.append(f"| {f['name']} | {fmt(f['ours'], f['unit'])} | {f['peer_name']} | "
                     f"{fmt(f['peer'], f['unit'])} | {ratio} | {f['target']} | {ok} |")
    st = R.get("store", {})
    if st:
        lines += ["", f"Storing: Orthanc POST /instances CT {st['orthanc_ct_s']:.1f} s, J2K "
                  f"{st['orthanc_j2k_s']:.1f} s; ours `./run.sh import` CT {st['ours_ct_s']:.1f} s, "
                  f"J2K {st['ours_j2k_s']:.1f} s (includes process start); fast native copies "
                  f"made at import: {st['ours_fast_copies']}."]
    notes = R.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "Raw numbers: render_bench.json. Chart: render_bench.png.", ""]
    (out / "render_bench.md").write_text("\n".join(lines))
    try:
        chart(R["figures"], out / "render_bench.png", R)
    except Exception as exc:  # noqa: BLE001 - the chart is a nicety
        log(f"chart not drawn: {exc}")
    log("\n".join(lines))


def _ascii(s: str) -> str:
    """The default bitmap font has no ×, ≤, ²."""
    return s.replace("×", "x").replace("≤", "<=").replace("²", "^2").replace("½", "1/2")


def chart(F: list[dict], path: Path, R: dict) -> None:
    from PIL import Image, ImageDraw, ImageFont
    rows = [f for f in F if f["peer"] is not None]
    W, row_h, left = 1100, 54, 430
    H = 70 + row_h * len(rows) + 30
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    try:
        font = ImageFont.load_default(size=13)
        big = ImageFont.load_default(size=16)
    except TypeError:
        font = big = ImageFont.load_default()
    d.text((10, 10), f"CloudFilm (blue) vs peer (orange), {R['machine']['nproc']} cores "
           f"{R['machine']['cpu']}, {R['date'][:10]}; bars scaled per row; "
           "ratio = how many times better CloudFilm is", fill="black", font=big)
    y = 50
    for f in rows:
        scale = max(f["ours"], f["peer"]) or 1
        d.text((10, y + 4), _ascii(f["name"])[:66], fill="black", font=font)
        d.text((10, y + 22), f"({f['unit']}, {'higher' if f['better'] == 'higher' else 'lower'}"
               f" is better) vs {f['peer_name'][:32]}", fill="#555", font=font)
        for j, (v, col) in enumerate(((f["ours"], "#1f6fd1"), (f["peer"], "#e8821e"))):
            bw = int((W - left - 260) * v / scale)
            d.rectangle([left, y + 4 + j * 20, left + max(bw, 1), y + 20 + j * 20], fill=col)
            d.text((left + bw + 6, y + 5 + j * 20), fmt(v, f["unit"]), fill="black", font=font)
        ratio = f"{f['ratio']:.2f}x" if f["ratio"] else ""
        ok = "" if f["pass"] is None else (" PASS" if f["pass"] else " FAIL")
        d.text((W - 110, y + 12), ratio + ok, fill="green" if f["pass"] else "black",
               font=big)
        y += row_h
    im.save(path)


if __name__ == "__main__":
    sys.exit(main())
