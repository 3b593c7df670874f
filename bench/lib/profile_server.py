"""Profile one worker of our server with py-spy while wrk drives a render load.

    .venv/bin/python -m bench.lib.profile_server --py-spy /tmp/pyspy-venv/bin/py-spy \
        [--load uncached|warm|j2k] [--gil] [--seconds 8] [--out bench/results/profile-uncached.txt]

py-spy is not a project requirement: install it in a scratch venv
(python3 -m venv /tmp/pyspy-venv && /tmp/pyspy-venv/bin/pip install py-spy).
It prints the functions where the sampled worker spent its time (self and inclusive),
and /healthz latencies measured during the load.
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.lib.cloudfilm import CloudFilmServer
from bench.lib.httpclient import Client, timed_get
from bench.lib.phantom import make_series
from bench.lib.wrk import run_wrk
from bench.render_bench import JPEG, med, ours_path, pct


def summarize(raw: Path, top: int = 25) -> str:
    self_c, incl_c, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        try:
            n = int(n)
        except ValueError:
            continue
        frames = stack.split(";")
        total += n
        if frames:
            self_c[frames[-1]] += n
        for f in set(frames[1:]):
            incl_c[f] += n
    out = [f"samples: {total}", "", "self (top):"]
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in self_c.most_common(top)]
    out += ["", "inclusive (top):"]
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in incl_c.most_common(top)]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--py-spy", default="/tmp/pyspy-venv/bin/py-spy")
    ap.add_argument("--load", choices=["uncached", "warm", "j2k"], default="uncached")
    ap.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--data-dir", default="/tmp/cfbench-data")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    ct = make_series(Path(a.data_dir) / "ct64", 64, compressed=False, name="ct64",
                     series_number=1)
    series = ct
    if a.load == "j2k":
        series = make_series(Path(a.data_dir) / "j2k300", 300, compressed=True,
                             name="j2k300", series_number=2)
    tmp = Path(tempfile.mkdtemp(prefix="cfbench-prof-"))
    srv = CloudFilmServer(tmp, processes=a.processes)
    try:
        srv.import_paths(ct["files"] + (series["files"] if series is not ct else []))
        srv.start()
        hdr = dict(JPEG)
        token = srv.provision_token()
        if token:
            hdr["Authorization"] = f"Bearer {token}"
        paths = [ours_path(series, k) for k in range(len(series["files"]))]
        for p in [ours_path(ct, k) for k in range(16)]:
            Client(srv.base, hdr).get(p)           # fresh connections: both workers warm
        res = {}
        th = threading.Thread(target=lambda: res.update(run_wrk(
            srv.base, paths, headers=hdr, duration=a.seconds + 3,
            random_viewport=a.load != "warm")))
        th.start()
        time.sleep(1)
        pid = srv.workers()[0] if srv.workers() else srv.proc.pid
        raw = tmp / "raw.txt"
        cmd = [a.py_spy, "record", "-p", str(pid), "-d", str(a.seconds), "-r", "200",
               "--format", "raw", "-o", str(raw), "--nonblocking"]
        if a.gil:
            cmd.append("--gil")
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cl, hz = Client(srv.base), []
        end = time.monotonic() + a.seconds
        while time.monotonic() < end:
            hz.append(timed_get(cl, "/healthz")[0])
            time.sleep(0.02)
        spy.wait()
        th.join()
        text = (f"load: {a.load}, {res.get('rps', 0):.0f} frames/s over 8 connections; "
                f"profiled worker pid {pid}{' (GIL holders only)' if a.gil else ''}\n"
                f"/healthz during load: median {med(hz):.1f} ms, p99 {pct(hz, 99):.1f} ms, "
                f"max {max(hz):.1f} ms, n={len(hz)}\n\n" + summarize(raw))
        if a.out:
            Path(a.out).write_text(text + "\n")
            Path(a.out + ".raw").write_text(raw.read_text())   # py-spy collapsed stacks
        print(text)
    finally:
        srv.stop()
        subprocess.run(["rm", "-rf", str(tmp)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
