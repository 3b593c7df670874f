"""A small keep-alive HTTP client (stdlib only) for latencies, scrolls and uploads.

Run as ``python -m bench.lib.httpclient MODE --base http://127.0.0.1:PORT ...`` so the same
code can run inside the Orthanc network namespace (``ip netns exec cfbench ...``). It prints
one JSON object on stdout. Only loopback bases are accepted.

Modes:
  wait      poll PATH until it answers 200 (or --timeout)
  latency   N sequential requests on one keep-alive connection cycling --paths-file
  scroll    every path of --paths-file once, --concurrency parallel keep-alive connections
  probe     sequential requests every --interval s for --duration s (e.g. /healthz under load)
  upload    POST each file of --files-file to PATH (Orthanc /instances); returns the answers
"""
from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse
from pathlib import Path


def _conn(base: str) -> http.client.HTTPConnection:
    u = urllib.parse.urlsplit(base)
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing a non-loopback base URL {base!r}")
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=120)


class Client:
    def __init__(self, base: str, headers: dict | None = None):
        self.base = base
        self.headers = headers or {}
        self.c = _conn(base)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, bytes]:
        h = dict(self.headers, **(headers or {}))
        for attempt in (0, 1):
            try:
                self.c.request(method, path, body=body, headers=h)
                r = self.c.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.c.close()
                    self.c = _conn(self.base)
                return r.status, data
            except (http.client.HTTPException, ConnectionError, OSError):
                self.c.close()
                self.c = _conn(self.base)
                if attempt:
                    raise
        raise AssertionError

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)


def timed_get(cl: Client, path: str) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    st, body = cl.get(path)
    return (time.perf_counter() - t0) * 1000.0, st, len(body)


def mode_wait(a) -> dict:
    end = time.monotonic() + a.timeout
    last = None
    while time.monotonic() < end:
        try:
            st, _ = Client(a.base).get(a.path)
            if st == 200:
                return {"ok": True}
            last = f"HTTP {st}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.1)
    return {"ok": False, "error": last}


def _paths(a) -> list[str]:
    return [p for p in Path(a.paths_file).read_text().splitlines() if p.strip()]


def mode_latency(a) -> dict:
    paths = _paths(a)
    cl = Client(a.base, _headers(a))
    for i in range(a.warmup):
        cl.get(paths[i % len(paths)])
    ms, bad, size = [], 0, 0
    for i in range(a.n):
        if a.sleep:
            time.sleep(a.sleep)
        t, st, n = timed_get(cl, paths[i % len(paths)])
        ms.append(t)
        size += n
        bad += st != 200
    return {"ms": ms, "errors": bad, "mean_bytes": size / max(a.n, 1)}


def mode_scroll(a) -> dict:
    paths = _paths(a)
    lock = threading.Lock()
    nxt = [0]
    res: list = [None] * len(paths)
    clients = [Client(a.base, _headers(a)) for _ in range(a.concurrency)]
    for cl in clients:             # connect before the clock starts
        cl.c.connect()

    def worker(cl):
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(paths):
                return
            res[i] = timed_get(cl, paths[i])

    th = [threading.Thread(target=worker, args=(cl,)) for cl in clients]
    t0 = time.perf_counter()
    for t in th:
        t.start()
    for t in th:
        t.join()
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "n": len(paths), "fps": len(paths) / wall,
            "ms": [r[0] for r in res], "errors": sum(r[1] != 200 for r in res),
            "mean_bytes": sum(r[2] for r in res) / len(res)}


def mode_probe(a) -> dict:
    cl = Client(a.base)
    cl.get(a.path)
    ms, bad = [], 0
    end = time.monotonic() + a.duration
    while time.monotonic() < end:
        t, st, _ = timed_get(cl, a.path)
        ms.append(t)
        bad += st != 200
        time.sleep(a.interval)
    return {"ms": ms, "errors": bad}


def mode_upload(a) -> dict:
    files = [p for p in Path(a.files_file).read_text().splitlines() if p.strip()]
    cl = Client(a.base)
    out, t0 = [], time.perf_counter()
    for f in files:
        st, body = cl.request("POST", a.path, Path(f).read_bytes(),
                              {"Content-Type": "application/dicom"})
        if st != 200:
            return {"ok": False, "error": f"{f}: HTTP {st} {body[:200]!r}"}
        out.append(json.loads(body))
    return {"ok": True, "answers": out, "wall_s": time.perf_counter() - t0}


def _headers(a) -> dict:
    h = {}
    for item in a.header or []:
        k, _, v = item.partition(":")
        h[k.strip()] = v.strip()
    return h


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["wait", "latency", "scroll", "probe", "upload"])
    p.add_argument("--base", required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--paths-file")
    p.add_argument("--files-file")
    p.add_argument("--header", action="append")
    p.add_argument("-n", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--interval", type=float, default=0.02)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--sleep", type=float, default=0.0, help="latency: pause before each request")
    a = p.parse_args(argv)
    out = globals()[f"mode_{a.mode}"](a)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
