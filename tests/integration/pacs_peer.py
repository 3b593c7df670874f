"""Orthanc acting as the hospital PACS, in its own network namespace that has only `lo`
(bench/orthanc_peer.py starts it; here its DICOM server is on, and it knows CLOUDFILM as a
C-MOVE destination at 127.0.0.1:<scp_port> inside the same namespace). Anything that talks to
it runs in that namespace: `peer.prefix + [command…]`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.orthanc_peer import OrthancPeer

ROOT = Path(__file__).resolve().parents[2]


class PacsPeer(OrthancPeer):
    def __init__(self, netns: str | None = None, scp_port: int = 11112,
                 dicom_port: int = 4242, log=lambda *a: None):
        super().__init__(netns=netns or f"cfpacs{os.getpid() % 100000}", log=log)
        self.scp_port = scp_port
        self.dicom_port = dicom_port
        self.ae_title = "ORTHANC"

    def config(self) -> dict:
        c = super().config()
        c.update({
            "Name": "cloudfilm-test-pacs",
            "DicomServerEnabled": True, "DicomAet": self.ae_title, "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False, "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True,
            "DicomModalities": {"cloudfilm": ["CLOUDFILM", "127.0.0.1", self.scp_port]},
            "DicomScpTimeout": 30, "Plugins": [], "StorageAccessOnFind": "Never",
            "DefaultEncoding": "Utf8",
        })
        return c

    def storescu(self, files, *, aec=None, port=None, extra=(), timeout=300):
        return subprocess.run(self.prefix + ["storescu", "-aet", "STORESCU", "-aec",
                                             aec or self.ae_title, "-nh", *extra, "127.0.0.1",
                                             str(port or self.dicom_port), *map(str, files)],
                              capture_output=True, text=True, timeout=timeout)

    def run_python(self, module: str, *args: str, timeout: float = 300):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        return subprocess.run(self.prefix + [sys.executable, "-m", module, *args],
                              capture_output=True, text=True, env=env, timeout=timeout,
                              cwd=str(ROOT))
