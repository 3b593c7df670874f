"""Ingest: instances per second from storescu (dcmtk) into CloudFilm's DICOM listener and
into Orthanc's, same files, same run. Both servers and storescu run inside one network
namespace that has only `lo` (Orthanc cannot bind loopback only).

    .venv/bin/python -m bench.ingest_bench [--files 300] [--size 512]

Prints and saves bench/results/ingest_<time>.json. Needs root (ip netns).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydicom.uid import generate_uid  # noqa: E402

from bench.orthanc_peer import orthanc_version  # noqa: E402
from tests.dicom_factory import ct_bytes  # noqa: E402
from tests.integration.pacs_peer import PacsPeer  # noqa: E402


def make_files(d: Path, n: int, size: int, j2k: bool = False) -> list[Path]:
    """n CT slices of one series. j2k: JPEG 2000 lossless of a body-like phantom with noise
    (about half the raw size, as real CT compresses), else Explicit VR Little Endian."""
    import numpy as np
    from pydicom.uid import JPEG2000Lossless
    from tests.dicom_factory import ct_dataset
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:size, :size]
    body = (((yy - size / 2) / (size * 0.42)) ** 2 + ((xx - size / 2) / (size * 0.48)) ** 2) < 1
    out = []
    for i in range(n):
        p = d / f"{'j' if j2k else 'u'}{i:04d}.dcm"
        if not j2k:
            p.write_bytes(ct_bytes(study_uid=study, series_uid=series, z=float(i), size=size,
                                   patient_id="BENCH1", name="李^雷", charset="ISO_IR 192"))
        else:
            ds = ct_dataset(study_uid=study, series_uid=series, z=float(i), size=size,
                            patient_id="BENCH2", name="韩^梅梅", charset="ISO_IR 192")
            arr = np.where(body, 1064, 24) + rng.normal(0, 18, (size, size))
            ds.PixelData = np.clip(arr, 0, 4000).astype(np.int16).tobytes()
            ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
            ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out


def timed_storescu(peer: PacsPeer, files, aec, port, extra=()) -> float:
    t0 = time.perf_counter()
    r = peer.storescu(files, aec=aec, port=port, timeout=900, extra=extra)
    wall = time.perf_counter() - t0
    if r.returncode or "Failed" in r.stderr:
        raise SystemExit(f"storescu to {aec} failed: {r.stderr[-1500:]}")
    return wall


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--files", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="cf-ingest-") as tmp:
        tmp = Path(tmp)
        (tmp / "files").mkdir()
        sets = {"ct": make_files(tmp / "files", a.files, a.size),
                "j2k": make_files(tmp / "files", a.files, a.size, j2k=True)}
        mb = {k: sum(f.stat().st_size for f in v) / 1e6 for k, v in sets.items()}
        with PacsPeer(netns=f"cfingest{os.getpid() % 10000}", scp_port=11112) as peer:
            conf = tmp / "cf.toml"
            conf.write_text("\n".join([
                'port = 18080', f'database_url = "sqlite:///{tmp}/cf.db"',
                f'data_dir = "{tmp}/data"', f'secret_key_file = "{tmp}/secret.key"',
                "demo_data = false", "processes = 1", "dicom_scp_enabled = true",
                "dicom_port = 11112", 'log_level = "WARNING"']))
            env = dict(os.environ, PYTHONPATH=str(ROOT),
                       CLOUDFILM_ADMIN_PASSWORD="Bench-ingest-1!")
            log = open(tmp / "cf.log", "wb")
            cf = subprocess.Popen(peer.prefix + [sys.executable, "-m", "server.cli",
                                                 "--config", str(conf), "serve", "--no-demo"],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                for _ in range(300):
                    r = subprocess.run(peer.prefix + ["echoscu", "-aec", "CLOUDFILM",
                                                      "127.0.0.1", "11112"],
                                       capture_output=True)
                    if r.returncode == 0:
                        break
                    time.sleep(0.2)
                results = {}
                for kind, files in sets.items():
                    propose = ("-xv",) if kind == "j2k" else ()     # send J2K as stored
                    results[kind] = {
                        "orthanc": timed_storescu(peer, files, "ORTHANC", peer.dicom_port,
                                                  propose),
                        "cloudfilm": timed_storescu(peer, files, "CLOUDFILM", 11112, propose)}
            finally:
                cf.terminate()
                cf.wait(20)
                log.close()
    doc = {"bench": "ingest", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "peer": orthanc_version(), "files": a.files,
           "sets": {"ct": f"{a.size}x{a.size} CT, Explicit VR LE",
                    "j2k": f"{a.size}x{a.size} CT, JPEG 2000 lossless (sent as stored)"},
           "total_mb": {k: round(v, 1) for k, v in mb.items()},
           "client": "storescu (dcmtk), 1 association", "results": {}, "ratios": {}}
    for kind, by_server in results.items():
        doc["results"][kind] = {k: {"wall_s": round(v, 3),
                                    "instances_per_s": round(a.files / v, 1),
                                    "mb_per_s": round(mb[kind] / v, 1)}
                                for k, v in by_server.items()}
        doc["ratios"][kind] = round(by_server["orthanc"] / by_server["cloudfilm"], 2)
        for k, v in doc["results"][kind].items():
            print(f"{kind:4s} {k:10s} {v['instances_per_s']:7.1f} instances/s  "
                  f"({v['mb_per_s']} MB/s)")
        print(f"{kind}: CloudFilm / Orthanc: {doc['ratios'][kind]}x")
    out = ROOT / "bench" / "results" / f"ingest_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(doc, indent=1))
    rows = [f"# Ingest from storescu: CloudFilm vs Orthanc ({doc['time']})", "",
            f"Machine: {doc['machine']}; peer {doc['peer']}; {doc['files']} files per set; "
            f"client {doc['client']}.",
            "Reproduce: `sudo .venv/bin/python -m bench.ingest_bench`", "",
            "| set | server | wall s | instances/s | MB/s |", "|---|---|---|---|---|"]
    for kind, by_server in doc["results"].items():
        for k, v in by_server.items():
            rows.append(f"| {doc['sets'][kind]} | {k} | {v['wall_s']} | "
                        f"{v['instances_per_s']} | {v['mb_per_s']} |")
    rows.append("")
    for kind, ratio in doc["ratios"].items():
        rows.append(f"- {kind}: CloudFilm / Orthanc **{ratio}×** (target ≥ 2: "
                    f"{'pass' if ratio >= 2 else 'FAIL'})")
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print(f"saved {out.relative_to(ROOT)} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
