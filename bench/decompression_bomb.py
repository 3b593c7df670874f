"""Decompression bomb (issue 14): server memory while a 16384x16384 JPEG-LS file of about
2 KB (256 MiB decoded) is sent by STOW-RS and C-STORE and while a copy already in the
catalog (stored before the limit existed) is rendered. Target: the server process grows by
less than 64 MiB. The decode workers' peak is reported too (they have an address-space
limit; the header check refuses the bomb there as well).

Starts CloudFilm (`server.cli serve`, SQLite in a temporary folder, DICOM listener on) and
samples /proc/PID/status (VmRSS) of the server and its children every 10 ms. Saves
bench/results/security/bomb_<time>.json and .md.

    PYTHONPATH=. .venv/bin/python -m bench.decompression_bomb
"""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.lib.cloudfilm import children  # noqa: E402
from bench.security_starvation import Server  # noqa: E402
from tests.integration.test_kill import free_port  # noqa: E402

SIDE = 16384
TARGET_MIB = 64
CMD = "PYTHONPATH=. .venv/bin/python -m bench.decompression_bomb"


def bomb(study: str, sop: str) -> bytes:
    """A real JPEG-LS bomb: 16384x16384 8-bit zeros, encoded by CharLS (about 2 KB)."""
    import numpy as np
    from jpeg_ls import encode_array
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    from tests.dicom_factory import ct_dataset, to_bytes
    ds = ct_dataset(patient_id="BOMB1", study_uid=study, series_uid=study + ".1", sop_uid=sop,
                    accession="BOMB-" + sop[-1], size=16)
    ds.Rows = ds.Columns = SIDE
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = encapsulate([bytes(encode_array(np.zeros((SIDE, SIDE), np.uint8)))])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    return to_bytes(ds)


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


class Sampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.stop, self.server_peak, self.worker_peak = pid, False, 0, 0

    def run(self) -> None:
        while not self.stop:
            self.server_peak = max(self.server_peak, rss_kib(self.pid))
            for c in children(self.pid):
                self.worker_peak = max(self.worker_peak, rss_kib(c))
            time.sleep(0.01)


def store_before_the_limit(srv: Server, data: bytes) -> None:
    """Put one bomb into the catalog as if stored before max_decoded_mb existed."""
    from adapters.dicom_meta import extract_meta
    from render.decode import limits
    from server.config import load_config
    from server.context import open_context
    ctx = open_context(load_config(path=srv.conf, env={}))
    try:
        saved = dict(limits)
        limits.update(max_decoded_bytes=1 << 40, max_frame_bytes=1 << 40)
        meta, _ = extract_meta(data)
        limits.update(saved)
        assert ctx.catalog.store_instance(meta, data, source="import",
                                          origin="old.dcm").outcome == "stored"
    finally:
        ctx.close()


def stow(srv: Server, token: str, data: bytes):
    import requests
    return requests.post(
        srv.url + "/dicomweb/studies",
        data=b"--b1\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--b1--\r\n",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b1',
                 "Accept": "application/dicom+json", "Authorization": f"Bearer {token}"},
        timeout=300)


def cstore(port: int, data: bytes) -> str:
    import io

    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage
    from pydicom.uid import JPEGLSLossless
    ae = AE(ae_title="BOMBER")
    ae.add_requested_context(CTImageStorage, [JPEGLSLossless])
    assoc = ae.associate("127.0.0.1", port, ae_title="CLOUDFILM")
    if not assoc.is_established:
        return "association refused"
    st = assoc.send_c_store(pydicom.dcmread(io.BytesIO(data)))
    assoc.release()
    return f"0x{int(st.Status):04X}" if st else "no answer"


def main() -> int:
    import argparse

    import requests
    p = argparse.ArgumentParser()
    p.add_argument("--no-header-limit", action="store_true",
                   help="max_decoded_mb / max_frame_mb at their maximum: what the bomb costs "
                        "when only the decode workers stand between it and the server")
    a = p.parse_args()
    global CMD
    if a.no_header_limit:
        CMD += " --no-header-limit"
    with tempfile.TemporaryDirectory(prefix="cf-bomb-") as tmp:
        tmp = Path(tmp)
        srv = Server(tmp, 4)
        dport = free_port()
        srv.conf.write_text(srv.conf.read_text() + "\n" + "\n".join([
            "dicom_scp_enabled = true", f"dicom_port = {dport}",
            'dicom_allowed_aets = "BOMBER"'] + (
                ["max_decoded_mb = 4096", "max_frame_mb = 4096"] if a.no_header_limit
                else [])) + "\n")
        srv.cli("migrate")
        srv.cli("user-add", "doctor1", "--roles", "doctor", "--no-change")
        token = srv.cli("token", "doctor1").strip().splitlines()[0].strip()
        stored = bomb("1.2.826.0.1.3680043.10.544.1", "1.2.826.0.1.3680043.10.544.1.1.1")
        store_before_the_limit(srv, stored)
        fresh = [bomb("1.2.826.0.1.3680043.10.544.2", f"1.2.826.0.1.3680043.10.544.2.1.{k}")
                 for k in range(1, 4)]
        srv.start()
        try:
            s = Sampler(srv.proc.pid)
            # warm-up: the render path and its decode worker are loaded before the baseline
            r0 = requests.get(srv.url + "/healthz", timeout=30)
            time.sleep(2)
            base = rss_kib(srv.proc.pid)
            s.server_peak = base
            s.start()
            t0 = time.perf_counter()
            stow_status = [stow(srv, token, d).status_code for d in fresh]
            cstore_status = [cstore(dport, d) for d in fresh[:2]]
            path = ("/dicomweb/studies/1.2.826.0.1.3680043.10.544.1/series/"
                    "1.2.826.0.1.3680043.10.544.1.1/instances/"
                    "1.2.826.0.1.3680043.10.544.1.1.1/frames/1/rendered")
            render_status = [requests.get(srv.url + path, timeout=300, headers={
                "Authorization": f"Bearer {token}"}).status_code for _ in range(3)]
            wall = time.perf_counter() - t0
            time.sleep(0.3)
            s.stop = True
            s.join()
            after = rss_kib(srv.proc.pid)
        finally:
            srv.stop()
    growth = (s.server_peak - base) / 1024
    res = {"bomb_bytes": len(fresh[0]), "decoded_mib": SIDE * SIDE >> 20,
           "healthz": r0.status_code, "stow_status": stow_status,
           "cstore_status": cstore_status, "render_status": render_status,
           "server_rss_base_mib": round(base / 1024, 1),
           "server_rss_peak_mib": round(s.server_peak / 1024, 1),
           "server_rss_after_mib": round(after / 1024, 1),
           "server_growth_mib": round(growth, 1),
           "decode_worker_peak_mib": round(s.worker_peak / 1024, 1), "wall_s": round(wall, 2)}
    doc = {"bench": "decompression_bomb", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": f"{platform.machine()} {os.cpu_count()} cores (shared)", "command": CMD,
           "header_limit": not a.no_header_limit,
           "target_growth_mib": TARGET_MIB, "results": res, "pass": growth < TARGET_MIB}
    print(json.dumps(res, indent=1))
    outdir = ROOT / "bench" / "results" / "security"
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / f"bomb_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(doc, indent=1))
    rows = [f"# Decompression bomb: server memory ({doc['time']}"
            + (", header limits off" if a.no_header_limit else "") + ")", "",
            f"Machine: {doc['machine']}. Bomb: {SIDE}x{SIDE} 8-bit JPEG-LS, "
            f"{res['bomb_bytes']} bytes, {res['decoded_mib']} MiB decoded.",
            f"Reproduce: `{CMD}`", "",
            "| step | answers |", "|---|---|",
            f"| STOW-RS x3 | HTTP {stow_status} "
            f"({'stored' if a.no_header_limit else 'FailedSOPSequence'}) |",
            f"| C-STORE x2 | {cstore_status} |",
            f"| render of a copy stored before the limit x3 | HTTP {render_status} |", "",
            "| server RSS | MiB |", "|---|---|",
            f"| before | {res['server_rss_base_mib']} |", f"| peak | {res['server_rss_peak_mib']} |",
            f"| after | {res['server_rss_after_mib']} |",
            f"| growth (peak - before) | {res['server_growth_mib']} |",
            f"| decode worker peak | {res['decode_worker_peak_mib']} |", "",
            f"Target: growth < {TARGET_MIB} MiB: {'pass' if doc['pass'] else 'FAIL'}."]
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print(f"saved {out.relative_to(ROOT)} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
