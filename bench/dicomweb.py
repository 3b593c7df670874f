"""DICOMweb speed: CloudFilm's /dicomweb side by side with Orthanc's DICOMweb plugin (Debian
orthanc + orthanc-dicomweb), same data in both, one run.

  (a) QIDO-RS study search, PatientName wildcard (王*, 李小* …, limit=100) over N exams:
      p50/p95 per server (target CloudFilm p95 <= 50 ms)
  (b) WADO-RS /metadata of a 300-slice series: cold (first request after a server restart,
      so the servers' own caches are empty; the OS page cache stays warm) and warm
      (targets <= 200 ms cold, <= 20 ms warm, >= 3x Orthanc)
  (c) WADO-RS frames of that uncompressed 512x512 CT series, 8 concurrent keep-alive
      clients, frames/s (target >= 2x Orthanc)

    .venv/bin/python -m bench.dicomweb [--exams 10000] [--orthanc-exams N] [--slices 300]

Orthanc runs in this namespace on a free port with RemoteAccessAllowed false and its DICOM
server off; CloudFilm runs as ./run.sh serve on a free port in a scratch folder. The clients
are bench/lib/httpclient.py subprocesses (keep-alive, stdlib). Saves bench/results/
dicomweb_<time>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.lib.cloudfilm import CloudFilmServer, free_port  # noqa: E402

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "小明伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛超"
PINYIN = ["WANG", "LI", "ZHANG", "LIU", "CHEN", "YANG", "HUANG", "ZHAO", "WU", "ZHOU", "XU",
          "SUN", "MA", "ZHU", "HU", "GUO", "HE", "GAO", "LIN", "LUO"]
SYLLABLES = ["XIAO", "MING", "WEI", "FANG", "NA", "XIU", "YING", "MIN", "JING", "LI"]
# half the exams have Chinese names, half pinyin ones: Orthanc 1.10 stores PatientName as an
# ASCII-normalised identifier, so a Chinese wildcard matches nothing there (measured anyway)
QUERIES = {"chinese": ["王*", "李*", "张小*", "刘*", "陈?", "杨*", "黄伟*", "赵*", "吴*", "周*"],
           "pinyin": ["WANG*", "LI*", "ZHANG^XIAO*", "LIU*", "CHEN^?I*", "YANG*", "HUANG*",
                      "ZHAO*", "WU*", "ZHOU*"]}
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


class Orthanc:
    def __init__(self, work: Path):
        self.dir = work
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = None
        cfg = {"Name": "cf-dicomweb-bench", "StorageDirectory": str(work / "storage"),
               "IndexDirectory": str(work / "index"), "StorageCompression": False,
               "HttpServerEnabled": True, "HttpPort": self.port, "RemoteAccessAllowed": False,
               "AuthenticationEnabled": False, "DicomServerEnabled": False,
               "DicomPort": free_port(), "Plugins": [str(PLUGIN)], "SaveJobs": False,
               "KeepAlive": True, "TcpNoDelay": True, "DefaultEncoding": "Utf8",
               "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        (work / "config.json").write_text(json.dumps(cfg))

    def start(self) -> None:
        logf = open(self.dir / "orthanc.log", "ab")
        self.proc = subprocess.Popen(["Orthanc", str(self.dir / "config.json")], stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(self.base + "/system", timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(30)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def client(mode: str, base: str, *args: str, headers=()) -> dict:
    hs = [x for h in headers for x in ("--header", h)]
    out = subprocess.run([sys.executable, "-m", "bench.lib.httpclient", mode, "--base", base,
                          *hs, *args], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=3600)
    if out.returncode:
        raise RuntimeError(f"client {mode}: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def pct(ms: list[float], q: float) -> float:
    s = sorted(ms)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


def make_data(d: Path, exams: int, slices: int) -> dict:
    """exams tiny one-instance studies with Chinese names, and one 300-slice 512x512 CT."""
    from pydicom.uid import generate_uid

    from tests.dicom_factory import ct_dataset, to_bytes
    rng = random.Random(16)
    (d / "exams").mkdir()
    for k in range(exams):
        if k % 2:
            name = (rng.choice(PINYIN) + "^" + "".join(rng.choice(SYLLABLES)
                                                      for _ in range(rng.choice((1, 2)))))
        else:
            name = (rng.choice(SURNAMES) + "^" + "".join(rng.choice(GIVEN)
                                                        for _ in range(rng.choice((1, 2)))))
        ds = ct_dataset(patient_id=f"B{k:06d}", name=name, charset="ISO_IR 192",
                        accession=f"A{k:06d}", size=2, pixel_value=0,
                        study_date=f"2026{1 + k % 12:02d}{1 + k % 28:02d}")
        (d / "exams" / f"{k:06d}.dcm").write_bytes(to_bytes(ds))
    study, series = generate_uid(), generate_uid()
    (d / "series").mkdir()
    sops = []
    for k in range(slices):
        ds = ct_dataset(patient_id="BSERIES", name="钱^多多", charset="ISO_IR 192",
                        study_uid=study, series_uid=series, z=float(k), size=512,
                        accession="ASERIES")
        ds.InstanceNumber = k + 1
        sops.append(str(ds.SOPInstanceUID))
        (d / "series" / f"{k:04d}.dcm").write_bytes(to_bytes(ds))
    return {"study": study, "series": series, "sops": sops}


def qido_paths(prefix: str, queries: list[str]) -> list[str]:
    # wildcards unencoded: Orthanc's plugin takes PatientName=%2A literally (0 matches)
    return [f"{prefix}/studies?PatientName={urllib.parse.quote(q, safe='*?')}&limit=100"
            for q in queries]


def write_paths(work: Path, name: str, paths: list[str]) -> str:
    p = work / name
    p.write_text("\n".join(paths))
    return str(p)


def measure(work: Path, cf: CloudFilmServer, token: str, orth: Orthanc, data: dict,
            args) -> dict:
    auth = (f"Authorization: Bearer {token}",)
    servers = {"cloudfilm": (cf, cf.base, "/dicomweb", auth),
               "orthanc": (orth, orth.base, "/dicom-web", ())}
    res: dict = {}
    for name, (srv, base, prefix, hs) in servers.items():
        r = {}
        for qset, queries in QUERIES.items():
            qp = write_paths(work, f"qido-{name}-{qset}.txt", qido_paths(prefix, queries))
            q = client("latency", base, "--paths-file", qp, "-n", str(args.n), "--warmup",
                       "20", headers=hs + ("Accept: application/dicom+json",))
            r[f"qido_{qset}"] = {"p50_ms": pct(q["ms"], .5), "p95_ms": pct(q["ms"], .95),
                                 "errors": q["errors"], "mean_bytes": round(q["mean_bytes"])}
        meta = f"{prefix}/studies/{data['study']}/series/{data['series']}/metadata"
        mp = write_paths(work, f"meta-{name}.txt", [meta])
        cold = []
        for _ in range(args.cold):
            srv.restart()
            c = client("latency", base, "--paths-file", mp, "-n", "1", "--warmup", "0",
                       headers=hs + ("Accept: application/dicom+json",))
            cold.append(round(c["ms"][0], 1))
            if c["errors"]:
                raise RuntimeError(f"{name} metadata failed")
        w = client("latency", base, "--paths-file", mp, "-n", "30", "--warmup", "6",
                   headers=hs + ("Accept: application/dicom+json",))
        r["metadata"] = {"cold_ms": cold, "cold_median_ms": statistics.median(cold),
                         "warm_p50_ms": pct(w["ms"], .5), "warm_p95_ms": pct(w["ms"], .95),
                         "errors": w["errors"], "bytes": round(w["mean_bytes"])}
        frames = [f"{prefix}/studies/{data['study']}/series/{data['series']}/instances/{s}"
                  f"/frames/1" for s in data["sops"]] * args.frame_rounds
        fp = write_paths(work, f"frames-{name}.txt", frames)
        client("scroll", base, "--paths-file", fp, "--concurrency", "8",
               headers=hs + (f"Accept: {FRAME_ACCEPT}",))            # warm-up round
        f = client("scroll", base, "--paths-file", fp, "--concurrency", "8",
                   headers=hs + (f"Accept: {FRAME_ACCEPT}",))
        r["frames"] = {"fps": round(f["fps"], 1), "n": f["n"], "errors": f["errors"],
                       "p50_ms": pct(f["ms"], .5), "p95_ms": pct(f["ms"], .95),
                       "mean_bytes": round(f["mean_bytes"])}
        res[name] = r
        print(name, json.dumps(r), flush=True)
    return res


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--exams", type=int, default=10000)
    p.add_argument("--orthanc-exams", type=int, default=None,
                   help="load only this many of the exams into Orthanc (slow uploads)")
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("-n", type=int, default=200, help="QIDO requests per server")
    p.add_argument("--cold", type=int, default=3, help="cold metadata samples (restarts)")
    p.add_argument("--frame-rounds", type=int, default=2)
    p.add_argument("--processes", type=int, default=2, help="CloudFilm worker processes")
    p.add_argument("--label", default="")
    args = p.parse_args()
    if not shutil.which("Orthanc") or not PLUGIN.exists():
        raise SystemExit("apt-get install orthanc orthanc-dicomweb")
    work = Path(tempfile.mkdtemp(prefix="cf-dwbench-"))
    cf = orth = None
    doc = {"command": "python -m bench.dicomweb " + " ".join(sys.argv[1:]),
           "when": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "orthanc": subprocess.run(["Orthanc", "--version"], capture_output=True,
                                     text=True).stdout.splitlines()[0]}
    try:
        t0 = time.perf_counter()
        data = make_data(work, args.exams, args.slices)
        doc["generate_s"] = round(time.perf_counter() - t0, 1)
        cf = CloudFilmServer(work / "cf", processes=args.processes)
        doc["cloudfilm_import"] = {k: v for k, v in cf.import_paths(
            [work / "exams", work / "series"]).items() if k == "wall_s"}
        token = cf.provision_token()
        cf.start()
        (work / "orthanc").mkdir()
        orth = Orthanc(work / "orthanc")
        orth.start()
        files = sorted((work / "exams").iterdir())[:args.orthanc_exams or args.exams]
        files += sorted((work / "series").iterdir())
        up = client("upload", orth.base, "--path", "/instances", "--files-file",
                    write_paths(work, "upload.txt", list(map(str, files))))
        if not up.get("ok"):
            raise RuntimeError(up.get("error"))
        doc["orthanc_upload"] = {"instances": len(files), "wall_s": round(up["wall_s"], 1)}
        doc["exams"] = {"cloudfilm": args.exams, "orthanc": len(files) - args.slices}
        print("loaded", json.dumps(doc), flush=True)
        doc["results"] = measure(work, cf, token, orth, data, args)
    finally:
        if cf:
            cf.stop()
        if orth:
            orth.stop()
        shutil.rmtree(work, ignore_errors=True)
    save(doc, args.label)
    return 0


def save(doc: dict, label: str) -> None:
    r = doc["results"]
    c, o = r["cloudfilm"], r["orthanc"]
    checks = [
        ("QIDO p95 <= 50 ms", max(c["qido_chinese"]["p95_ms"], c["qido_pinyin"]["p95_ms"])
         <= 50),
        ("metadata cold <= 200 ms", c["metadata"]["cold_median_ms"] <= 200),
        ("metadata warm p50 <= 20 ms", c["metadata"]["warm_p50_ms"] <= 20),
        ("metadata warm >= 3x Orthanc",
         o["metadata"]["warm_p50_ms"] >= 3 * c["metadata"]["warm_p50_ms"]),
        ("frames/s >= 2x Orthanc", c["frames"]["fps"] >= 2 * o["frames"]["fps"]),
    ]
    doc["targets"] = {k: bool(v) for k, v in checks}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = ROOT / "bench" / "results" / f"dicomweb_{stamp}{('-' + label) if label else ''}.json"
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False))
    rows = [f"# DICOMweb: CloudFilm vs Orthanc DICOMweb plugin ({doc['when']})", "",
            f"Machine: {doc['machine']}; {doc['orthanc']} + orthanc-dicomweb; "
            f"exams: CloudFilm {doc['exams']['cloudfilm']}, Orthanc {doc['exams']['orthanc']}; "
            f"Orthanc upload {doc['orthanc_upload']['wall_s']} s for "
            f"{doc['orthanc_upload']['instances']} instances.",
            f"Reproduce: `.venv/bin/{doc['command'].strip()}`",
            "", "| measure | CloudFilm | Orthanc |", "|---|---|---|",
            *[f"| QIDO PatientName {k} wildcards p50 / p95 ms (mean body bytes) | "
              f"{c['qido_' + k]['p50_ms']} / {c['qido_' + k]['p95_ms']} "
              f"({c['qido_' + k]['mean_bytes']}) | {o['qido_' + k]['p50_ms']} / "
              f"{o['qido_' + k]['p95_ms']} ({o['qido_' + k]['mean_bytes']}) |"
              for k in QUERIES],
            f"| series metadata cold ms (each restart) | {c['metadata']['cold_ms']} | "
            f"{o['metadata']['cold_ms']} |",
            f"| series metadata warm p50 / p95 ms | {c['metadata']['warm_p50_ms']} / "
            f"{c['metadata']['warm_p95_ms']} | {o['metadata']['warm_p50_ms']} / "
            f"{o['metadata']['warm_p95_ms']} |",
            f"| frames/s, 8 clients (p50 ms) | {c['frames']['fps']} ({c['frames']['p50_ms']}) | "
            f"{o['frames']['fps']} ({o['frames']['p50_ms']}) |", ""]
    rows += [f"- {k}: {'pass' if v else 'FAIL'}" for k, v in doc["targets"].items()]
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print(f"saved {out.relative_to(ROOT)} and .md")


if __name__ == "__main__":
    sys.exit(main())
