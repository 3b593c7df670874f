"""Start, stop and feed our own server (./run.sh) for the benchmark, in a scratch folder."""
from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from server.cli import child_pids as children

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class CloudFilmServer:
    def __init__(self, work: Path, processes: int = 2, env: dict | None = None):
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.processes = processes
        self.extra = dict(env or {})
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict:
        e = dict(os.environ)
        e.update({
            "CLOUDFILM_DATABASE_URL": f"sqlite:///{self.work}/db.sqlite",
            "CLOUDFILM_DATA_DIR": str(self.work / "data"),
            "CLOUDFILM_SECRET_KEY_FILE": str(self.work / "key"),
            "CLOUDFILM_PORT": str(self.port),
            "CLOUDFILM_PROCESSES": str(self.processes),
            "CLOUDFILM_DEMO_DATA": "false",
            "CLOUDFILM_LOG_LEVEL": "WARNING",
        })
        e.update(self.extra)
        return e

    def import_paths(self, paths: list[str]) -> dict:
        t0 = time.perf_counter()
        r = subprocess.run([str(ROOT / "run.sh"), "import", *map(str, paths)], cwd=ROOT,
                           env=self.env(), capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode:
            raise RuntimeError(f"import failed ({r.returncode}): {r.stdout[-1500:]} "
                               f"{r.stderr[-1500:]}")
        return {"wall_s": wall, "summary": r.stdout.strip()[-800:]}

    def provision_token(self) -> str | None:
        """When the server has staff accounts (./run.sh user-add / token), create a bench
        doctor and return an API token for 'Authorization: Bearer …'; None when it has none."""
        import secrets
        helptext = subprocess.run([str(ROOT / "run.sh"), "--help"], cwd=ROOT, env=self.env(),
                                  capture_output=True, text=True).stdout
        if "user-add" not in helptext or "token" not in helptext:
            return None
        # the password goes through stdin (getpass falls back to it without a terminal), which
        # works with every version (early settings loaders refused CLOUDFILM_NEW_USER_PASSWORD)
        password = "Cfb-" + secrets.token_urlsafe(16) + "a9Z"
        r = subprocess.run([str(ROOT / "run.sh"), "user-add", "cfbench", "--roles", "doctor",
                            "--no-change"], cwd=ROOT, env=self.env(), capture_output=True,
                           text=True, input=password + "\n", start_new_session=True)
        if r.returncode and "exist" not in (r.stdout + r.stderr).lower():
            raise RuntimeError(f"user-add failed: {r.stdout} {r.stderr}")
        r = subprocess.run([str(ROOT / "run.sh"), "token", "cfbench", "--name", "bench",
                            "--days", "1"], cwd=ROOT, env=self.env(), capture_output=True,
                           text=True)
        if r.returncode:
            raise RuntimeError(f"token failed: {r.stdout} {r.stderr}")
        return r.stdout.strip().splitlines()[-1].strip()

    def start(self, **extra_env) -> None:
        self.stop()
        self.extra.update({k: str(v) for k, v in extra_env.items()})
        logf = open(self.work / "server.log", "ab")
        self.proc = subprocess.Popen([str(ROOT / "run.sh"), "serve", "--no-demo"], cwd=ROOT,
                                     env=self.env(), stdout=logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        logf.close()
        end = time.monotonic() + 120
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("our server exited: " + (self.work / "server.log")
                                   .read_text(errors="replace")[-2000:])
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=2) as r:
                    if r.status == 200 and len(self.workers()) >= (self.processes if
                                                                  self.processes > 1 else 0):
                        time.sleep(0.3)
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("our server did not answer /healthz within 120 s")

    def restart(self, **extra_env) -> None:
        self.stop()
        self.start(**extra_env)

    def workers(self) -> list[int]:
        return children(self.proc.pid) if self.proc else []

    def pids(self) -> list[int]:
        return ([self.proc.pid] + self.workers()) if self.proc else []

    def rss(self) -> dict[int, float]:
        return {p: rss_mb(p) for p in self.pids()}

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        self.proc = None
