"""Orthanc as the peer of the render benchmark, isolated in a network namespace.

Orthanc cannot be told to listen on loopback only, so it runs inside a network namespace
that has nothing but ``lo`` (``ip netns add cfbench``); every client that talks to it (the
uploader, the latency client, wrk) runs in that same namespace, so the only traffic is
loopback. Needs root (ip netns). Installs the Debian packages when they are missing::

    apt-get install -y orthanc orthanc-dicomweb orthanc-gdcm wrk

(with a temporary policy-rc.d so the package does not start a system-wide Orthanc).

    with OrthancPeer() as peer:          # namespace + temp dir + Orthanc
        ids = peer.upload(files)         # SOP Instance UID -> Orthanc instance id
        peer.restart()                   # empties its caches
    # Orthanc stopped, namespace deleted, temp dir removed (also on errors)

Run alone (``python -m bench.orthanc_peer``) it starts, prints /system and stops.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
PLUGINS = ("libOrthancDicomWeb.so", "libOrthancGdcm.so")
PACKAGES = ("orthanc", "orthanc-dicomweb", "orthanc-gdcm", "wrk")
NETNS = "cfbench"
HTTP_PORT = 8042


def _missing() -> list[str]:
    miss = []
    if not shutil.which("Orthanc"):
        miss.append("Orthanc")
    miss += [p for p in PLUGINS if not (PLUGIN_DIR / p).exists()]
    if not shutil.which("wrk"):
        miss.append("wrk")
    return miss


def ensure_installed(log=print) -> None:
    """apt-get install the peer and wrk when missing, without starting a system Orthanc."""
    if not _missing():
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing {_missing()}: run as root (apt-get install {' '.join(PACKAGES)})")
    log(f"installing {' '.join(PACKAGES)} (missing: {', '.join(_missing())}) …")
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:  # keep the package's init script from starting Orthanc on all interfaces
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                        *PACKAGES], check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        if ours:
            policy.unlink(missing_ok=True)
    if _missing():
        raise SystemExit(f"still missing after apt-get: {_missing()}")


def orthanc_version() -> str:
    out = subprocess.run(["Orthanc", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].strip() if out else "Orthanc (unknown version)"


class OrthancPeer:
    def __init__(self, netns: str = NETNS, port: int = HTTP_PORT, log=print):
        self.netns = netns
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._ns_created = False
        self.python = sys.executable

    # namespace --------------------------------------------------------------------------
    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]

    def _create_netns(self) -> None:
        existing = subprocess.run(["ip", "netns", "list"], capture_output=True,
                                  text=True).stdout.split()
        if self.netns in existing:   # left over by a killed run: reuse only if it is empty
            links = subprocess.run(self.prefix + ["ip", "-o", "link"], capture_output=True,
                                   text=True).stdout.strip().splitlines()
            if len(links) != 1 or ": lo:" not in links[0]:
                raise SystemExit(f"netns {self.netns} exists and has more than lo: {links}")
        else:
            subprocess.run(["ip", "netns", "add", self.netns], check=True)
            self._ns_created = True
        subprocess.run(self.prefix + ["ip", "link", "set", "lo", "up"], check=True)
        links = subprocess.run(self.prefix + ["ip", "-o", "link"], capture_output=True,
                               text=True, check=True).stdout.strip().splitlines()
        assert len(links) == 1 and ": lo:" in links[0], links

    def _delete_netns(self) -> None:
        subprocess.run(["ip", "netns", "del", self.netns], stderr=subprocess.DEVNULL)

    # Orthanc ----------------------------------------------------------------------------
    def config(self) -> dict:
        assert self.dir is not None
        return {
            "Name": "cfbench-peer",
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "DicomPort": 4242,
            "Plugins": [str(PLUGIN_DIR / p) for p in PLUGINS],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "Gdcm": {"Enable": True},
            "SaveJobs": False,
            "HttpDescribeErrors": True,
            "KeepAlive": True,
            "TcpNoDelay": True,
        }

    def start(self) -> None:
        ensure_installed(self.log)
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="cfbench-orthanc-"))
            self._create_netns()
            (self.dir / "config.json").write_text(json.dumps(self.config(), indent=1))
        logf = open(self.dir / "orthanc.log", "ab")
        self.proc = subprocess.Popen(self.prefix + ["Orthanc", str(self.dir / "config.json")],
                                     stdout=logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        logf.close()
        r = self.client("wait", "--path", "/system", "--timeout", "60")
        if not r.get("ok"):
            tail = (self.dir / "orthanc.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Orthanc did not answer /system: {r}\n{tail}")

    def stop_process(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        self.proc = None

    def restart(self) -> None:
        """Stop and start Orthanc on the same storage: its in-memory caches start empty."""
        self.stop_process()
        self.start()

    def stop(self) -> None:
        self.stop_process()
        if self._ns_created:
            self._delete_netns()
            self._ns_created = False
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def __enter__(self):
        atexit.register(self.stop)
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        atexit.unregister(self.stop)

    # clients inside the namespace -----------------------------------------------------------
    def client(self, mode: str, *args: str, timeout: float = 900) -> dict:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        out = subprocess.run(self.prefix + [self.python, "-m", "bench.lib.httpclient", mode,
                                            "--base", self.base, *args],
                             capture_output=True, text=True, env=env, timeout=timeout)
        if out.returncode:
            raise RuntimeError(f"client {mode} failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout)

    def upload(self, files: list[str]) -> dict:
        """POST every file to /instances; returns {"ids": Orthanc ids in file order, "wall_s"}."""
        assert self.dir is not None
        lst = self.dir / "upload.txt"
        lst.write_text("\n".join(map(str, files)))
        r = self.client("upload", "--path", "/instances", "--files-file", str(lst))
        if not r.get("ok"):
            raise RuntimeError(f"upload to Orthanc failed: {r.get('error')}")
        return {"ids": [a["ID"] for a in r["answers"]], "wall_s": r["wall_s"]}


def main() -> int:
    with OrthancPeer() as peer:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
            fh.write("/system\n")
        print(json.dumps(peer.client("latency", "--paths-file", fh.name, "-n", "5",
                                     "--warmup", "1")))
        print(orthanc_version())
    return 0


if __name__ == "__main__":
    sys.exit(main())
