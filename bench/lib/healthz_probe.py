"""/healthz latency while wrk drives different render loads on our server.

    sudo .venv/bin/python -m bench.lib.healthz_probe

Compares JPEG-cached renders of one slice vs 64 slices cycled (the only difference is how
many distinct instances are looked up) and uncached viewports of one vs 64 slices.
"""
import json, threading, time, tempfile, subprocess
from pathlib import Path
from bench.lib.cloudfilm import CloudFilmServer
from bench.lib.wrk import run_wrk
from bench.lib.httpclient import Client, timed_get
from bench.render_bench import ours_path, JPEG, med, pct
from bench.lib.phantom import make_series
m = make_series(Path("/tmp/cfbench-data/ct64"), 64, compressed=False, name="ct64", series_number=1)
tmp = Path(tempfile.mkdtemp(prefix='cfbench-hz-'))
s = CloudFilmServer(tmp, processes=2)
s.import_paths(m['files']); s.start()
tok = s.provision_token(); h = dict(JPEG, Authorization=f"Bearer {tok}")
try:
    for i in range(16): Client(s.base, h).get(ours_path(m, i))
    for label, paths, rv in [("idle", None, False),
                             ("cached 1 slice", [ours_path(m, 5)], False),
                             ("cached 64 slices cycled", [ours_path(m, k) for k in range(64)], False),
                             ("uncached viewports, 1 slice", [ours_path(m, 5)], True),
                             ("uncached viewports, 64 slices", [ours_path(m, k) for k in range(64)], True)]:
        res = {}
        th = None
        if paths:
            th = threading.Thread(target=lambda: res.update(run_wrk(s.base, paths, headers=h, duration=8, random_viewport=rv)))
            th.start(); time.sleep(1)
        cl = Client(s.base); hz = []
        end = time.monotonic() + 6
        while time.monotonic() < end:
            hz.append(timed_get(cl, "/healthz")[0]); time.sleep(0.02)
        if th: th.join()
        print(f"{label:32s} load {res.get('rps',0):6.0f}/s err {res.get('errors',0)}  healthz median {med(hz):6.1f} ms p99 {pct(hz,99):6.1f} ms n={len(hz)}", flush=True)
finally:
    s.stop(); subprocess.run(['rm','-rf',str(tmp)])
