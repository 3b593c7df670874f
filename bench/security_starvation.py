"""Render starvation (issue 14): one share visitor asks for six 2048-px MIPs at once, again
and again, while another visitor scrolls 256-px frames of the same CT. Reports the victim's
p50/p95 frame latency without and with the attacker (target: p95 <= 500 ms with him).

Starts CloudFilm (`server.cli serve`, SQLite in a temporary folder) on a generated CT
(`--slices` 512x512 slices), opens one share twice (two visitor sessions: two principals),
and talks to it over HTTP only. Saves bench/results/security/starvation_<time>.json and .md.

    .venv/bin/python -m bench.security_starvation [--slices 160] [--frames 120]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.test_kill import free_port  # noqa: E402

STUDY, SERIES, ACCESSION = "1.2.826.0.1.3680043.10.543.1", "1.2.826.0.1.3680043.10.543.1.1", \
    "STARVE1"
TARGET_P95_MS = 500


def make_ct(folder: Path, slices: int) -> None:
    """A 512x512 phantom CT (a body ellipse with a bright spine), one file per slice."""
    import numpy as np

    from tests.dicom_factory import ct_dataset, to_bytes
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:512, 0:512]
    body = ((xx - 256) / 200.0) ** 2 + ((yy - 256) / 150.0) ** 2 < 1
    spine = ((xx - 256) / 25.0) ** 2 + ((yy - 330) / 25.0) ** 2 < 1
    for k in range(slices):
        px = np.full((512, 512), -1000, np.int16)
        px[body] = 40 + (k % 7)
        px[spine] = 700 + 3 * k
        ds = ct_dataset(patient_id="SV001", name="Starve^Test", study_uid=STUDY,
                        series_uid=SERIES, sop_uid=f"{SERIES}.{k + 1}", accession=ACCESSION,
                        z=float(k), size=16)
        ds.Rows = ds.Columns = 512
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = 1.0
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelRepresentation = 1
        ds.InstanceNumber = k + 1
        ds.PixelData = px.tobytes()
        (folder / f"ct{k:04d}.dcm").write_bytes(to_bytes(ds))


class Server:
    def __init__(self, tmp: Path, render_threads: int):
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = tmp / "cloudfilm.toml"
        self.conf.write_text("\n".join([
            f"port = {self.port}", f'database_url = "sqlite:///{tmp}/cf.db"',
            f'data_dir = "{tmp}/data"', f'secret_key_file = "{tmp}/secret.key"',
            "demo_data = false", "processes = 1", f"render_threads = {render_threads}",
            "decode_processes = 1", "predecode_after_import = false", 'log_level = "WARNING"']))
        self.env = dict(os.environ, PYTHONPATH=str(ROOT),
                        CLOUDFILM_NEW_USER_PASSWORD="Starve-Bench-9x!")
        self.proc = None

    def cli(self, *args) -> str:
        out = subprocess.run([sys.executable, "-m", "server.cli", "--config", str(self.conf),
                              *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                             timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {out.stderr[-2000:]}")
        return out.stdout

    def start(self) -> None:
        import requests
        self.log = open(self.tmp / "server.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "--config",
                                      str(self.conf), "serve", "--no-demo"], cwd=ROOT,
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                requests.get(self.url + "/healthz", timeout=1)
                return
            except requests.RequestException:
                assert self.proc.poll() is None, (self.tmp / "server.log").read_text()[-3000:]
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def visitor(srv: Server, share: dict):
    import requests
    s = requests.Session()
    token = share["url"].rsplit("/", 1)[1]
    r = s.post(srv.url + "/api/share/open", json={"token": token, "code": share["code"]},
               headers={"Origin": srv.url}, timeout=30)
    r.raise_for_status()
    return s


def scroll(s, srv: Server, frames: int, slices: int, tag: int) -> list[float]:
    """Sequential 256-px frames, each a fresh render (a window of its own)."""
    out = []
    for i in range(frames):
        sop = f"{SERIES}.{(i % slices) + 1}"
        path = (f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{sop}/frames/1/rendered"
                f"?viewport=256,256&window=40,{400 + tag * 1000 + i}")
        t0 = time.perf_counter()
        r = s.get(srv.url + path, timeout=300)
        out.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.status_code
    return out


def attack(s, srv: Server, n: int, size: int, stop: threading.Event, done: list) -> None:
    """n MIPs always in flight (distinct angles: never cached) until told to stop."""
    def one(k: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            url = (srv.url + f"/api/render/studies/{STUDY}/series/{SERIES}/mip?size={size}"
                   f"&yaw={(i * n + k) % 360}&pitch={(i * 7 + k) % 60}")
            done.append(s.get(url, timeout=900).status_code)
    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def pct(vals: list[float], q: float) -> float:
    v = sorted(vals)
    return round(v[min(len(v) - 1, int(round(q * (len(v) - 1))))], 1)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--slices", type=int, default=160)
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--mips", type=int, default=6)
    p.add_argument("--mip-size", type=int, default=2048)
    p.add_argument("--render-threads", type=int, default=4)
    p.add_argument("--attacker", choices=("share", "staff"), default="share",
                   help="staff: a doctor's API token (not size-capped below 2048 px), to see "
                        "the fair scheduler alone")
    p.add_argument("--label", default="",
                   help="what code this runs (e.g. 'before issue 14: git archive of HEAD')")
    a = p.parse_args()
    cmd = ("PYTHONPATH=. .venv/bin/python -m bench.security_starvation "
           f"--slices {a.slices} --frames {a.frames} --mips {a.mips} --mip-size {a.mip_size} "
           f"--render-threads {a.render_threads} --attacker {a.attacker}")
    with tempfile.TemporaryDirectory(prefix="cf-starve-") as tmp:
        tmp = Path(tmp)
        make_ct(tmp / "ct", a.slices)
        srv = Server(tmp, a.render_threads)
        srv.cli("import", str(tmp / "ct"))
        share = json.loads(srv.cli("share", ACCESSION, "--max-opens", "10"))
        token = None
        if a.attacker == "staff":
            srv.cli("user-add", "doctor1", "--roles", "doctor", "--no-change")
            token = srv.cli("token", "doctor1").strip().splitlines()[0].strip()
        srv.start()
        try:
            victim, attacker = visitor(srv, share), visitor(srv, share)
            if token:
                import requests
                attacker = requests.Session()
                attacker.headers["Authorization"] = f"Bearer {token}"
            warm = attacker.get(srv.url + f"/api/render/studies/{STUDY}/series/{SERIES}/mip"
                                "?size=256", timeout=600)       # builds the volume once
            assert warm.status_code == 200, warm.text[:300]
            scroll(victim, srv, min(a.slices, a.frames), a.slices, 0)   # decoded once
            alone = scroll(victim, srv, a.frames, a.slices, 1)
            stop, codes = threading.Event(), []
            t = threading.Thread(target=attack, args=(attacker, srv, a.mips, a.mip_size, stop,
                                                      codes))
            t.start()
            time.sleep(1.0)                 # the six MIPs are in
            attacked = scroll(victim, srv, a.frames, a.slices, 2)
            stop.set()
            t.join()
        finally:
            srv.stop()
    res = {"alone": {"p50_ms": pct(alone, .5), "p95_ms": pct(alone, .95),
                     "mean_ms": round(statistics.mean(alone), 1),
                     "max_ms": round(max(alone), 1)},
           "attacked": {"p50_ms": pct(attacked, .5), "p95_ms": pct(attacked, .95),
                        "mean_ms": round(statistics.mean(attacked), 1),
                        "max_ms": round(max(attacked), 1)},
           "attacker_mips_answered": len(codes),
           "attacker_statuses": sorted(set(codes))}
    doc = {"bench": "security_starvation", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": f"{platform.machine()} {os.cpu_count()} cores (shared)",
           "command": cmd, "params": vars(a), "target_p95_ms": TARGET_P95_MS, "results": res,
           "pass": res["attacked"]["p95_ms"] <= TARGET_P95_MS}
    print(json.dumps(res, indent=1))
    outdir = ROOT / "bench" / "results" / "security"
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / f"starvation_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(doc, indent=1))
    rows = [f"# Render starvation: a visitor's 256-px frames while another asks for MIPs "
            f"({doc['time']})", "", *([f"Code: {a.label}.", ""] if a.label else []),
            f"Machine: {doc['machine']}. CT {a.slices} x 512x512; attacker ({a.attacker}): "
            f"{a.mips} MIPs of {a.mip_size} px at once, repeated ("
            + ("a share visitor: rendered at render_max_px_visitor, 1024"
               if a.attacker == "share" else "staff: rendered at full size") + "); victim: "
            f"{a.frames} sequential 256-px frames; render_threads {a.render_threads}.",
            f"Reproduce: `{cmd}`", "",
            "| victim | p50 ms | p95 ms | mean ms | max ms |", "|---|---|---|---|---|",
            f"| alone | {res['alone']['p50_ms']} | {res['alone']['p95_ms']} | "
            f"{res['alone']['mean_ms']} | {res['alone']['max_ms']} |",
            f"| with the attacker | {res['attacked']['p50_ms']} | {res['attacked']['p95_ms']} | "
            f"{res['attacked']['mean_ms']} | {res['attacked']['max_ms']} |", "",
            f"Target p95 ≤ {TARGET_P95_MS} ms with the attacker: "
            f"{'pass' if doc['pass'] else 'FAIL'}. Attacker's MIPs answered meanwhile: "
            f"{len(codes)} (statuses {res['attacker_statuses']})."]
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print(f"saved {out.relative_to(ROOT)} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
