"""Load benchmark (issue 17, item 6): virtual phones and doctors against one or two nodes.

    PYTHONPATH=. .venv/bin/python -m bench.load_bench                      # everything
    PYTHONPATH=. .venv/bin/python -m bench.load_bench --users 50,200 --stage-s 30 \\
        --configs direct --exams 10

A virtual phone (the film view's own requests, in its order): the share page, share status,
a think time for typing the code, the code (POST /api/share/open with include_study, as the
page does), the film page, the first frame at 720 px (X-Render-Priority 0), then 20 scroll
steps, each a full 720-px frame of the slice on screen (priority 0) and two 256-px previews of
the slices ahead (priority 2), at most 6 requests in flight, think times between steps; then a
pause and the next visit (a new browser: no cookie). One share per phone (max 1000 opens).
A virtual doctor (one per `--doctor-every` users) scrolls a 220-slice CT with an API token:
the study JSON, then every slice at 1024 px with 2 previews ahead, 80 ms between slices.

Users ramp 50 → 200 → 500 (each stage `--stage-s` seconds after its users have started);
the figures of a stage are of requests that started in it. Configurations, all in one run:
  direct  one node with `--processes` server processes, clients straight to its port
  nginx1  one node (1 process) pinned to CPU 0 (taskset) behind nginx
  nginx2  two nodes (1 process each) pinned to CPU 0 and CPU 1 behind nginx with
          conf/nginx/cloudfilm-cluster.conf, one database and one storage folder
  nginx1p one node with `--processes` processes (not pinned) behind nginx
  nginx2u nginx2 without pinning (nginx1p and nginx2u tell study affinity from pinning)
The load generator runs in this process (asyncio, keep-alive HTTP/1.1 over TLS through nginx,
plain HTTP direct) on the same 2 cores, which the figures include. Results go to
bench/results/load_<date>.json and .md with the load average and the server's CPU and RSS.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.lib.cloudfilm import CloudFilmServer, free_port, rss_mb  # noqa: E402
from bench.lib.phantom import make_series  # noqa: E402

RESULTS = ROOT / "bench" / "results"
NGINX = "/usr/sbin/nginx"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------- a small HTTP client

class HttpError(Exception):
    pass


class Conn:
    """One keep-alive HTTP/1.1 connection (Content-Length or chunked answers)."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None):
        self.host, self.port, self.tls = host, port, tls
        self.reader = self.writer = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.tls, server_hostname="localhost" if self.tls else None)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    async def request(self, method: str, path: str, headers: dict, body: bytes = b""):
        if self.writer is None:
            await self.open()
        lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *hdr_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        hdrs: dict[str, str] = {}
        cookies = []
        for line in hdr_lines:
            if ":" in line:
                k, v = line.split(":", 1)
                k = k.strip().lower()
                if k == "set-cookie":
                    cookies.append(v.strip())
                hdrs[k] = v.strip()
        if hdrs.get("transfer-encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                data += await self.reader.readexactly(size + 2)
                del data[-2:]
            data = bytes(data)
        else:
            data = await self.reader.readexactly(int(hdrs.get("content-length", "0")))
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return status, hdrs, cookies, data


class Pool:
    """A browser's connections to one origin: at most `size` requests in flight."""

    def __init__(self, host: str, port: int, tls, size: int = 6):
        self.host, self.port, self.tls = host, port, tls
        self.sem = asyncio.Semaphore(size)
        self.idle: list[Conn] = []

    async def request(self, method, path, headers, body=b""):
        async with self.sem:
            conn = self.idle.pop() if self.idle else Conn(self.host, self.port, self.tls)
            try:
                out = await conn.request(method, path, headers, body)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                conn.close()
                raise HttpError(type(exc).__name__) from exc
            if conn.writer is not None:
                self.idle.append(conn)
            return out

    def close(self) -> None:
        for c in self.idle:
            c.close()
        self.idle.clear()


# --------------------------------------------------------------------- recording

@dataclass
class Stats:
    started: float = 0.0
    requests: int = 0
    frames: int = 0
    errors: int = 0
    shed: int = 0
    error_kinds: dict = field(default_factory=dict)
    first_frame_ms: list = field(default_factory=list)     # code → first frame
    open_ms: list = field(default_factory=list)            # the code's answer alone
    frame0_ms: list = field(default_factory=list)          # the first frame's request alone
    frame_ms: list = field(default_factory=list)           # priority-0 frames while scrolling
    doctor_frame_ms: list = field(default_factory=list)


class Recorder:
    def __init__(self):
        self.stage: Stats | None = None

    def begin(self) -> Stats:
        self.stage = Stats(started=time.monotonic())
        return self.stage

    def note(self, status: int, kind: str, priority: int | None = None) -> None:
        s = self.stage
        if s is None:
            return
        s.requests += 1
        if status in (429, 503) and priority == 2:
            s.shed += 1                       # a preview refused while busy: asked later
        elif status >= 400:
            s.errors += 1
            key = f"{kind} {status}"
            s.error_kinds[key] = s.error_kinds.get(key, 0) + 1
        elif kind == "frame":
            s.frames += 1


REC = Recorder()


def frame_path(study: str, series: str, sop: str, side: int, quality: int) -> str:
    return (f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1/rendered"
            f"?viewport={side}%2C{side}&quality={quality}")


async def post(pool: Pool, path: str, headers: dict, payload: dict, kind: str):
    try:
        status, _h, cookies, data = await pool.request(
            "POST", path, {**headers, "Content-Type": "application/json"},
            json.dumps(payload).encode())
    except HttpError as exc:
        REC.note(599, f"{kind} {exc}")
        return 599, [], b""
    REC.note(status, kind)
    return status, cookies, data


async def get(pool: Pool, path: str, headers: dict, kind: str, priority=None):
    h = dict(headers)
    if priority is not None:
        h["X-Render-Priority"] = str(priority)
    try:
        status, _hdrs, _c, data = await pool.request("GET", path, h)
    except HttpError as exc:
        REC.note(599, f"{kind} {exc}", priority)
        return 599, b""
    REC.note(status, kind, priority)
    return status, data


async def phone(n: int, target, share: dict, think: float, stop: asyncio.Event) -> None:
    rnd = random.Random(n)
    await asyncio.sleep(rnd.uniform(0, 10))                # users arrive over 10 s
    while not stop.is_set():
        pool = Pool(*target)
        try:
            await phone_visit(pool, share, rnd, think)
        except Exception as exc:  # noqa: BLE001 - recorded; the next visit goes on
            REC.note(598, f"visit {type(exc).__name__}")
        finally:
            pool.close()
        await asyncio.sleep(rnd.uniform(2, 5) * think)


async def phone_visit(pool: Pool, share: dict, rnd: random.Random, think: float) -> None:
    base = {"Accept": "*/*", "User-Agent": "cfload-phone"}
    st, _ = await get(pool, f"/s/{share['token']}", base, "page")
    await post(pool, "/api/share/status", base, {"token": share["token"]}, "status")
    await asyncio.sleep(rnd.uniform(1.0, 3.0) * think)     # typing the code
    t_code = time.monotonic()
    stage = REC.stage
    st, cookies, data = await post(pool, "/api/share/open", base, {
        "token": share["token"], "code": share["code"], "include_study": True}, "open")
    if REC.stage is stage and stage is not None:
        stage.open_ms.append((time.monotonic() - t_code) * 1000)
    if st != 200:
        return
    opened = json.loads(data)
    cookie = "; ".join(c.split(";", 1)[0] for c in cookies)
    hdr = {**base, "Cookie": cookie}
    study = opened["study"]
    se = study["series"][0]
    sops = [i["sop_uid"] for i in se["instances"]]
    await get(pool, opened["film_url"], hdr, "page")
    su, ser = study["study_uid"], se["series_uid"]
    k = 0
    t0 = time.monotonic()
    st, _ = await get(pool, frame_path(su, ser, sops[k], 720, 88), hdr, "frame", 0)
    if st == 200 and REC.stage is stage and stage is not None:
        stage.first_frame_ms.append((time.monotonic() - t_code) * 1000)
        stage.frame0_ms.append((time.monotonic() - t0) * 1000)
    previews_until = 0.0          # as the viewer's loader: a 429 holds previews 2 s
    for _step in range(20):
        k = min(k + 1, len(sops) - 1)
        t0 = time.monotonic()
        jobs = [get(pool, frame_path(su, ser, sops[k], 720, 88), hdr, "frame", 0)]
        if t0 >= previews_until:
            for ahead in (1, 2):
                j = min(k + ahead + 2, len(sops) - 1)
                jobs.append(get(pool, frame_path(su, ser, sops[j], 256, 55), hdr, "frame", 2))
        first = asyncio.ensure_future(jobs[0])
        rest = asyncio.gather(*jobs[1:])
        st, _ = await first
        if st == 200 and stage is not None and REC.stage is stage:
            stage.frame_ms.append((time.monotonic() - t0) * 1000)
        if any(r[0] in (429, 503) for r in await rest):
            previews_until = time.monotonic() + 2.0
        await asyncio.sleep(rnd.uniform(0.2, 0.6) * think)


async def doctor(n: int, target, token: str, study: dict, stop: asyncio.Event) -> None:
    rnd = random.Random(10_000 + n)
    await asyncio.sleep(rnd.uniform(0, 10))
    hdr = {"Accept": "*/*", "Authorization": f"Bearer {token}", "User-Agent": "cfload-doctor"}
    pool = Pool(*target)
    previews_until = 0.0
    try:
        while not stop.is_set():
            st, data = await get(pool, f"/api/studies/{study['study_uid']}", hdr, "study")
            if st != 200:
                await asyncio.sleep(1)
                continue
            se = json.loads(data)["series"][0]
            sops = [i["sop_uid"] for i in se["instances"]]
            su, ser = study["study_uid"], se["series_uid"]
            for k in range(len(sops)):
                if stop.is_set():
                    break
                t0 = time.monotonic()
                stage = REC.stage
                jobs = [get(pool, frame_path(su, ser, sops[min(k + a, len(sops) - 1)],
                                             256, 55), hdr, "frame", 2) for a in (3, 4)] \
                    if t0 >= previews_until else []
                rest = asyncio.gather(*jobs)
                st, _ = await get(pool, frame_path(su, ser, sops[k], 1024, 88), hdr, "frame", 0)
                if st == 200 and stage is not None and REC.stage is stage:
                    stage.doctor_frame_ms.append((time.monotonic() - t0) * 1000)
                if any(r[0] in (429, 503) for r in await rest):
                    previews_until = time.monotonic() + 2.0
                await asyncio.sleep(0.08)
            await asyncio.sleep(rnd.uniform(1, 3))
    finally:
        pool.close()


# --------------------------------------------------------------------- the server side

def listen_drops() -> int:
    """The machine's dropped connection attempts so far (TcpExt ListenDrops: a full listen
    queue). Each one costs its client a SYN retry after 1 s or more."""
    try:
        head, values = [line.split() for line in Path("/proc/net/netstat").read_text()
                        .splitlines() if line.startswith("TcpExt:")][:2]
        return int(values[head.index("ListenDrops")])
    except (OSError, ValueError, IndexError):
        return 0


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tick       # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


class Deployment:
    """One configuration: its nodes, and nginx in front (or not)."""

    def __init__(self, name: str, work: Path, env: dict, nodes: int, processes: int,
                 pin: bool, use_nginx: bool):
        self.name, self.work = name, work
        self.nodes = [CloudFilmServer(work / f"node{i}", processes=processes, env=env)
                      for i in range(nodes)]
        self.pin, self.use_nginx = pin, use_nginx
        self.nginx = None
        self.target = None
        self.node_cpu = 0.0          # > 0: each node's CPU time capped to this many CPUs
        self.cgroups: list[Path] = []

    def start(self) -> None:
        for i, n in enumerate(self.nodes):
            n.start()
            if self.pin:
                for pid in n.pids():
                    subprocess.run(["taskset", "-a", "-cp", str(i % (os.cpu_count() or 1)),
                                    str(pid)], capture_output=True)
            if self.node_cpu:
                self.cgroups.append(cap_cpu(f"cfload-{self.name}-{i}", n.pids(),
                                            self.node_cpu))
        if not self.use_nginx:
            self.target = ("127.0.0.1", self.nodes[0].port, None)
            return
        from tests.security.test_nginx import prepare_site
        site = self.work / "nginx"
        site.mkdir(parents=True, exist_ok=True)
        ports = [n.port for n in self.nodes]
        https = free_port()
        cert = prepare_site(site, "cloudfilm-cluster.conf",
                            {8080: ports[0], 8081: ports[-1]}, free_port(), https)
        conf = (site / "nginx.conf").read_text()
        (site / "nginx.conf").write_text(conf.replace("worker_connections 64;",
                                                      "worker_connections 8192;"))
        self.nginx = subprocess.Popen([NGINX, "-c", str(site / "nginx.conf"), "-p", str(site),
                                       "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        tls = ssl.create_default_context(cafile=str(cert))
        self.target = ("127.0.0.1", https, tls)
        time.sleep(1.0)

    def pids(self) -> list[int]:
        out = [p for n in self.nodes for p in n.pids()]
        if self.nginx is not None:
            from server.cli import child_pids
            out += [self.nginx.pid, *child_pids(self.nginx.pid)]
        return out

    def server_pids(self) -> list[int]:
        return [p for n in self.nodes for p in n.pids()]

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.terminate()
            self.nginx.wait(10)
            self.nginx = None
        for n in self.nodes:
            n.stop()
        for cg in self.cgroups:          # empty once the node's last process has gone
            for _ in range(50):
                try:
                    cg.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        self.cgroups = []


def cap_cpu(name: str, pids: list[int], cpus: float) -> Path:
    """A cgroup (v1 cpu controller) giving `pids` and the processes they fork at most `cpus`
    CPUs of time (CFS quota): how "a node with its own core" is scaled down to a 2-core
    machine whose other core runs the load generator and nginx (--node-cpu)."""
    cg = Path("/sys/fs/cgroup/cpu") / name
    cg.mkdir(exist_ok=True)
    period = int((cg / "cpu.cfs_period_us").read_text())
    (cg / "cpu.cfs_quota_us").write_text(str(int(period * cpus)))
    for pid in pids:
        (cg / "cgroup.procs").write_text(str(pid))
    return cg


async def api(target, method: str, path: str, token: str, payload=None):
    pool = Pool(*target)
    try:
        body = json.dumps(payload).encode() if payload is not None else b""
        st, _h, _c, data = await pool.request(method, path, {
            "Authorization": f"Bearer {token}", "Content-Type": "application/json",
            "Accept": "application/json"}, body)
        return st, json.loads(data or b"null")
    finally:
        pool.close()


async def make_shares(target, token: str, studies: list[str], count: int) -> list[dict]:
    out = []
    for k in range(count):
        st, doc = await api(target, "POST", "/api/shares", token, {
            "study_uid": studies[k % len(studies)], "max_opens": 1000, "expires": "1d"})
        if st != 201:
            raise RuntimeError(f"share create {st}: {doc}")
        out.append({"token": doc["url"].rstrip("/").rsplit("/", 1)[1], "code": doc["code"]})
    return out


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))], 1)


async def run_stage(dep: Deployment, users: int, shares, token, doc_study, think: float,
                    stage_s: float, doctor_every: int, phones_running: list,
                    doctors_running: list, stop: asyncio.Event, profile=None) -> dict:
    want_doctors = users // doctor_every if doctor_every else 0
    while len(phones_running) < users - want_doctors:
        n = len(phones_running)
        phones_running.append(asyncio.ensure_future(phone(n, dep.target, shares[n], think,
                                                          stop)))
    while len(doctors_running) < want_doctors:
        n = len(doctors_running)
        doctors_running.append(asyncio.ensure_future(doctor(n, dep.target, token, doc_study,
                                                            stop)))
    await asyncio.sleep(12)                                   # the new users arrive
    cpu0, t0, drops0 = cpu_seconds(dep.pids()), time.monotonic(), listen_drops()
    own0 = sum(os.times()[:2])
    s = REC.begin()
    spy = None
    if profile is not None:
        workers = dep.nodes[0].workers() or [dep.nodes[0].proc.pid]
        spy = subprocess.Popen([profile[0], "record", "-p", str(workers[0]), "-d",
                                str(int(stage_s) - 2), "-r", "100", "--format", "raw", "-o",
                                str(profile[1]), "--nonblocking"] +
                               (["--gil"] if profile[2] else []),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(stage_s)
    REC.stage = None
    if spy is not None:
        await asyncio.get_running_loop().run_in_executor(None, spy.wait)
    wall = time.monotonic() - t0
    server_cpu = round((cpu_seconds(dep.pids()) - cpu0) / wall * 100, 1)
    gen_cpu = (sum(os.times()[:2]) - own0) / wall * 100
    return {
        "config": dep.name, "users": users, "phones": users - want_doctors,
        "doctors": want_doctors, "seconds": round(wall, 1),
        "visits": len(s.first_frame_ms),
        "first_frame_p50_ms": pct(s.first_frame_ms, 0.5),
        "first_frame_p95_ms": pct(s.first_frame_ms, 0.95),
        "first_frame_p99_ms": pct(s.first_frame_ms, 0.99),
        "open_p50_ms": pct(s.open_ms, 0.5), "open_p95_ms": pct(s.open_ms, 0.95),
        "frame0_p50_ms": pct(s.frame0_ms, 0.5), "frame0_p95_ms": pct(s.frame0_ms, 0.95),
        "scroll_frame_p95_ms": pct(s.frame_ms, 0.95),
        "doctor_frame_p95_ms": pct(s.doctor_frame_ms, 0.95),
        "requests_per_s": round(s.requests / wall, 1), "frames_per_s": round(s.frames / wall, 1),
        "errors": s.errors, "error_kinds": s.error_kinds, "previews_shed": s.shed,
        "listen_drops": listen_drops() - drops0,
        "server_cpu_pct": server_cpu, "generator_cpu_pct": round(gen_cpu, 1),
        "loadavg": os.getloadavg()[0],
        "rss_mb": {str(p): round(rss_mb(p), 1) for p in dep.server_pids()},
    }


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def process_tree(pid: int) -> list[int]:
    from server.cli import child_pids
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += child_pids(p)
    return out


def cache_budget_mb(a) -> int:
    """What one server process may hold: its cache budgets (the node's settings) + 256 MiB."""
    from server.config import SETTINGS_BY_NAME
    mb = {n: SETTINGS_BY_NAME[n].default for n in ("decoded_cache_mb", "volume_cache_mb",
                                                    "jpeg_cache_mb")}
    for item in a.set:
        name, _, value = item.partition("=")
        if name.strip() in mb:
            mb[name.strip()] = int(value)
    return sum(mb.values()) + 256


async def soak(dep: Deployment, users: int, seconds: float, a, phones_running,
               doctors_running, shares, token, doc_study, stop) -> dict:
    """`users` users for `seconds`: every process's RSS and open files every 15 s. The first
    sample is taken a minute in (caches filling is not growth); the verdict compares the end
    with it: RSS of each server process within its cache budgets + 256 MiB, no fd growth."""
    row = await run_stage(dep, users, shares, token, doc_study, a.think, 5, a.doctor_every,
                          phones_running, doctors_running, stop)
    samples, t0 = [], time.monotonic()
    while True:
        el = time.monotonic() - t0
        pids = [p for n in dep.nodes for p in process_tree(n.proc.pid)]
        samples.append({"t_s": round(el), "rss_mb": {str(p): round(rss_mb(p), 1) for p in pids},
                        "fds": {str(p): fd_count(p) for p in pids}})
        log(f"  soak {el:5.0f} s: RSS {sum(samples[-1]['rss_mb'].values()):.0f} MiB, "
            f"fds {sum(samples[-1]['fds'].values())}")
        if el >= seconds:
            break
        await asyncio.sleep(min(15.0, seconds - el + 0.1))
    base = next((x for x in samples if x["t_s"] >= 60), samples[0])
    end = samples[-1]
    budget = cache_budget_mb(a)
    servers = [str(p) for n in dep.nodes for p in (n.workers() if n.processes > 1
                                                    else [n.proc.pid])]
    over = {p: end["rss_mb"].get(p) for p in servers if end["rss_mb"].get(p, 0) > budget}
    fd_growth = {p: end["fds"][p] - base["fds"].get(p, 0) for p in end["fds"]}
    return {"config": dep.name, "users": users, "seconds": round(seconds),
            "budget_mb_per_server_process": budget, "server_pids": servers,
            "rss_end_mb": end["rss_mb"], "rss_max_mb": {p: max(x["rss_mb"].get(p, 0)
                                                               for x in samples) for p in end["rss_mb"]},
            "fds_base": base["fds"], "fds_end": end["fds"], "fd_growth": fd_growth,
            "rss_within_budget": not over, "fds_grew": any(g > 16 for g in fd_growth.values()),
            "errors_first_5s": row["errors"], "samples": samples}


async def run_config(dep: Deployment, users_list, a, doc_study, studies) -> list[dict]:
    token = dep.nodes[0].provision_token()
    shares = await make_shares(dep.target, token, studies, max(users_list))
    stop = asyncio.Event()
    phones_running: list = []
    doctors_running: list = []
    rows = []
    for users in users_list:
        log(f"{dep.name}: {users} users …")
        profile = None
        if a.py_spy and users == users_list[-1]:
            raw = RESULTS / f"load_profile_{dep.name}_{users}.raw"
            profile = (a.py_spy, raw, a.gil)
        row = await run_stage(dep, users, shares, token, doc_study, a.think, a.stage_s,
                              a.doctor_every, phones_running, doctors_running, stop, profile)
        if profile is not None and profile[1].exists():
            from bench.lib.profile_server import summarize
            text = summarize(profile[1], top=40)
            profile[1].with_suffix(".txt").write_text(text + "\n")
            log(f"profile of one server process: {profile[1].with_suffix('.txt')}")
        log(f"  first frame p50/p95 {row['first_frame_p50_ms']}/{row['first_frame_p95_ms']} "
            f"ms, {row['requests_per_s']} req/s, {row['frames_per_s']} frames/s, "
            f"errors {row['errors']}, shed {row['previews_shed']}, "
            f"listen drops {row['listen_drops']}, "
            f"server CPU {row['server_cpu_pct']}%")
        rows.append(row)
    if a.soak_s:
        log(f"{dep.name}: soak, {a.soak_users} users for {a.soak_s:.0f} s …")
        REC_SOAK.append(await soak(dep, a.soak_users, a.soak_s, a, phones_running,
                                   doctors_running, shares, token, doc_study, stop))
    stop.set()
    ends = await asyncio.gather(*phones_running, *doctors_running, return_exceptions=True)
    failed = [repr(e)[:200] for e in ends if isinstance(e, BaseException)]
    if failed:
        log(f"{len(failed)} virtual users ended with an error, e.g. {failed[0]}")
    return rows


def prepare_data(a) -> tuple[list[Path], list[str], dict]:
    data = Path(a.data_dir)
    dirs, studies = [], []
    log(f"generating {a.exams} CT exams of {a.slices} slices and one of 220 in {data} …")
    for k in range(a.exams):
        m = make_series(data / f"load{a.slices}-{k}", a.slices, compressed=False,
                        name=f"load{a.slices}-{k}", series_number=100 + k)
        dirs.append(Path(m["files"][0]).parent)
        studies.append(m["study_uid"])
    doc = make_series(data / "load-doctor220", 220, compressed=False, name="load-doctor220",
                      series_number=99)
    dirs.append(Path(doc["files"][0]).parent)
    return dirs, studies, {"study_uid": doc["study_uid"]}


def database_url(a, work: Path, name: str) -> str:
    if a.db == "sqlite":
        return f"sqlite:///{work}/db.sqlite"
    import pymysql
    db = f"cfload_{name}"
    c = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    with c.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
        cur.execute(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4")
    c.close()
    return f"mysql://root@127.0.0.1:3306/{db}"


REC_SOAK: list[dict] = []


def knee_lines(rows: list[dict], a) -> list[str]:
    """Each configuration's highest request rate over the stages (its knee when the last
    stages no longer raise it), and two nodes' against one node's."""
    best = {}
    for r in rows:
        if r["config"] not in best or r["requests_per_s"] > best[r["config"]]["requests_per_s"]:
            best[r["config"]] = r
    if len(rows) <= len(best):
        return []
    lines = ["", "Knee: each configuration's highest requests/s over the stages"
             + (f" (each node capped to {a.node_cpu:g} CPU)" if a.node_cpu else "") + ".", "",
             "| config | users | requests/s | code → first frame p95 ms |", "|---|---:|---:|---:|"]
    for name, r in best.items():
        lines.append(f"| {name} | {r['users']} | {r['requests_per_s']} | "
                     f"{r['first_frame_p95_ms']} |")
    if "nginx1" in best and "nginx2" in best:
        ratio = best["nginx2"]["requests_per_s"] / best["nginx1"]["requests_per_s"]
        lines += ["", f"Two nodes / one node at the knee: {ratio:.2f}× (target ≥ 1.8×)."]
    return lines


def soak_lines(soaks: list[dict]) -> list[str]:
    if not soaks:
        return []
    lines = ["", "Soak: RSS and open files of every process (server processes, their decode "
             "workers, the parent), from a minute in to the end.", "",
             "| config | users | seconds | server process RSS at 60 s → end (max) MiB | "
             "budget per server process MiB | fds at 60 s → end (all processes) | verdict |",
             "|---|---:|---:|---|---:|---|---|"]
    for s in soaks:
        base = next((x for x in s["samples"] if x["t_s"] >= 60), s["samples"][0])
        rss = "; ".join(f"{base['rss_mb'].get(p, 0):.0f} → {s['rss_end_mb'].get(p, 0):.0f} "
                        f"({s['rss_max_mb'].get(p, 0):.0f})" for p in s["server_pids"])
        ok = s["rss_within_budget"] and not s["fds_grew"]
        lines.append(f"| {s['config']} | {s['users']} | {s['seconds']} | {rss} | "
                     f"{s['budget_mb_per_server_process']} | {sum(s['fds_base'].values())} → "
                     f"{sum(s['fds_end'].values())} | {'pass' if ok else 'FAIL'} |")
    return lines


def write_results(rows: list[dict], a, argv) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"load_{stamp}"
    meta = {"command": "PYTHONPATH=. .venv/bin/python -m bench.load_bench " + " ".join(argv),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "db": a.db, "exams": a.exams, "slices": a.slices, "think": a.think,
            "settings": a.set}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                    "soak": REC_SOAK}, indent=1))
    lines = [f"# Load bench {stamp}", "", f"`{meta['command']}`", "",
             f"{a.exams} CT exams of {a.slices} slices (512²) for the phones, one 220-slice CT "
             f"for the doctors; database {a.db}; {os.cpu_count()} cores shared by the servers, "
             "nginx and the load generator.", "",
             "| config | users (phones+doctors) | code → first frame p50 / p95 / p99 ms | "
             "code's answer p50 / p95 ms | first frame's request p50 / p95 ms | "
             "scroll frame p95 ms | doctor frame p95 ms | requests/s | frames/s | errors | "
             "previews shed | listen drops | server CPU % | generator CPU % | load avg |",
             "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['users']} ({r['phones']}+{r['doctors']}) | "
                     f"{r['first_frame_p50_ms']} / {r['first_frame_p95_ms']} / "
                     f"{r['first_frame_p99_ms']} | {r['open_p50_ms']} / {r['open_p95_ms']} | "
                     f"{r['frame0_p50_ms']} / {r['frame0_p95_ms']} | {r['scroll_frame_p95_ms']} | "
                     f"{r['doctor_frame_p95_ms']} | {r['requests_per_s']} | "
                     f"{r['frames_per_s']} | {r['errors']} | {r['previews_shed']} | "
                     f"{r.get('listen_drops', '')} | "
                     f"{r['server_cpu_pct']} | {r['generator_cpu_pct']} | {r['loadavg']:.2f} |")
    errs = {f"{r['config']} {r['users']}": r["error_kinds"] for r in rows if r["error_kinds"]}
    if errs:
        lines += ["", "Errors by kind: " + json.dumps(errs, ensure_ascii=False)]
    lines += knee_lines(rows, a)
    lines += soak_lines(REC_SOAK)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", default="50,200,500", help="stages: users at once")
    ap.add_argument("--configs", default="direct,nginx1,nginx2")
    ap.add_argument("--processes", type=int, default=2, help="server processes of 'direct'")
    ap.add_argument("--stage-s", type=float, default=45.0)
    ap.add_argument("--think", type=float, default=1.0, help="scale of every think time")
    ap.add_argument("--doctor-every", type=int, default=25, help="one doctor per N users")
    ap.add_argument("--exams", type=int, default=40)
    ap.add_argument("--slices", type=int, default=80)
    ap.add_argument("--node-cpu", type=float, default=0.0,
                    help="cap each node's CPU time to this many CPUs (cgroup v1 cpu quota; "
                         "root): e.g. 0.5 gives one and two nodes half a core each and leaves "
                         "the generator and nginx a core, for the knee comparison")
    ap.add_argument("--soak-s", type=float, default=0.0,
                    help="after the stages, keep --soak-users users this long and sample every "
                         "process's RSS and open files (the 10-minute soak: 600)")
    ap.add_argument("--soak-users", type=int, default=200)
    ap.add_argument("--db", choices=("sqlite", "mysql"), default="sqlite")
    ap.add_argument("--data-dir", default="/tmp/cfbench-data")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--py-spy", default=None,
                    help="py-spy to profile one server process during the last stage "
                         "(python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy)")
    ap.add_argument("--gil", action="store_true", help="profile GIL holders only")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a server setting for every node (e.g. render_shed_loop_lag_ms=50)")
    a = ap.parse_args(argv)
    users_list = [int(u) for u in a.users.split(",")]
    dirs, studies, doc_study = prepare_data(a)
    work_root = Path(a.work or tempfile.mkdtemp(prefix="cfload-"))
    rows: list[dict] = []
    try:
        for name in a.configs.split(","):
            work = work_root / name
            shutil.rmtree(work, ignore_errors=True)          # a fresh database and storage
            shared = work / "shared"
            shared.mkdir(parents=True, exist_ok=True)
            env = {"CLOUDFILM_DATABASE_URL": database_url(a, shared, name),
                   "CLOUDFILM_DATA_DIR": str(shared / "data"),
                   "CLOUDFILM_SECRET_KEY_FILE": str(shared / "key"),
                   "CLOUDFILM_TRUSTED_PROXIES": "127.0.0.1/32"}
            for item in a.set:
                name_, _, value = item.partition("=")
                env["CLOUDFILM_" + name_.strip().upper()] = value.strip()
            dep = {"direct": lambda: Deployment(name, work, env, 1, a.processes, False, False),
                   "nginx1": lambda: Deployment(name, work, env, 1, 1, True, True),
                   "nginx2": lambda: Deployment(name, work, env, 2, 1, True, True),
                   "nginx1p": lambda: Deployment(name, work, env, 1, a.processes, False, True),
                   "nginx2u": lambda: Deployment(name, work, env, 2, 1, False, True)}[name]()
            dep.node_cpu = a.node_cpu
            log(f"{name}: importing {len(dirs)} series …")
            dep.nodes[0].import_paths(dirs)
            dep.start()
            try:
                rows += asyncio.run(run_config(dep, users_list, a, doc_study, studies))
            finally:
                dep.stop()
            shutil.rmtree(shared / "data", ignore_errors=True)
    finally:
        if a.work is None:
            shutil.rmtree(work_root, ignore_errors=True)
    out = write_results(rows, a, argv)
    log(f"results: {out}.md")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
