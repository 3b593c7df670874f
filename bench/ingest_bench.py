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
import socket
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


def make_files(d: Path, n: int, size: int) -> list[Path]:
    study, series = generate_uid(), generate_uid()
    out = []
    for i in range(n):
        p = d / f"{i:04d}.dcm"
        p.write_bytes(ct_bytes(study_uid=study, series_uid=series, z=float(i), size=size,
                               patient_id="BENCH1", name="李^雷", charset="ISO_IR 192"))
        out.append(p)
    return out


def timed_storescu(peer: PacsPeer, files, aec, port) -> float:
    t0 = time.perf_counter()
    r = peer.storescu(files, aec=aec, port=port, timeout=900)
    wall = time.perf_counter() - t0
    if r.returncode:
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
        files = make_files(tmp / "files", a.files, a.size)
        mb = sum(f.stat().st_size for f in files) / 1e6
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
                # alternate the order: each server gets the same files once
                results["orthanc"] = timed_storescu(peer, files, "ORTHANC", peer.dicom_port)
                results["cloudfilm"] = timed_storescu(peer, files, "CLOUDFILM", 11112)
            finally:
                cf.terminate()
                cf.wait(20)
                log.close()
    doc = {"bench": "ingest", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "peer": orthanc_version(), "files": a.files, "file_size": f"{a.size}x{a.size} CT, "
           "Explicit VR LE", "total_mb": round(mb, 1), "client": "storescu (dcmtk), 1 association",
           "results": {k: {"wall_s": round(v, 3), "instances_per_s": round(a.files / v, 1),
                           "mb_per_s": round(mb / v, 1)} for k, v in results.items()}}
    doc["ratio_cloudfilm_over_orthanc"] = round(results["orthanc"] / results["cloudfilm"], 2)
    for k, v in doc["results"].items():
        print(f"{k:10s} {v['instances_per_s']:7.1f} instances/s  ({v['mb_per_s']} MB/s)")
    print(f"CloudFilm / Orthanc: {doc['ratio_cloudfilm_over_orthanc']}x")
    out = ROOT / "bench" / "results" / f"ingest_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(doc, indent=1))
    rows = [f"# Ingest from storescu: CloudFilm vs Orthanc ({doc['time']})", "",
            f"Machine: {doc['machine']}; peer {doc['peer']}; {doc['files']} files of "
            f"{doc['file_size']} ({doc['total_mb']} MB); client {doc['client']}.",
            "Reproduce: `sudo .venv/bin/python -m bench.ingest_bench`", "",
            "| server | wall s | instances/s | MB/s |", "|---|---|---|---|"]
    for k, v in doc["results"].items():
        rows.append(f"| {k} | {v['wall_s']} | {v['instances_per_s']} | {v['mb_per_s']} |")
    rows += ["", f"CloudFilm / Orthanc: **{doc['ratio_cloudfilm_over_orthanc']}×** "
                 "(target ≥ 1)"]
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print(f"saved {out.relative_to(ROOT)} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
