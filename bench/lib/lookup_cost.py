"""Cost of the per-instance database lookup our render handler does on a cache miss.

    .venv/bin/python -m bench.lib.lookup_cost

Times FrameRenderer.lookup_instance (as the handler calls it, through _with_db) against
lookup_series, a bare connection + SELECT 1, and storage.writable(); then a cProfile of 64
instance lookups.
"""
import json, os, time, tempfile, subprocess, statistics
from pathlib import Path
from bench.lib.cloudfilm import CloudFilmServer
from bench.lib.phantom import make_series
m = make_series(Path("/tmp/cfbench-data/ct64"), 64, compressed=False, name="ct64", series_number=1)
tmp = Path(tempfile.mkdtemp(prefix='cfbench-lk-'))
s = CloudFilmServer(tmp, processes=1); s.import_paths(m['files'])
os.environ.update({k: v for k, v in s.env().items() if k.startswith('CLOUDFILM_')})
from server.config import load_config
from server.context import open_context
ctx = open_context(load_config(None), migrate_db=False)
from server.handlers.base import _with_db
r = ctx.renders
def t(fn, n):
    ts = []
    for k in range(n):
        r._instances._d.clear(); r._series._d.clear()
        t0 = time.perf_counter(); fn(k); ts.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ts)
print("lookup_instance via _with_db (as the handler does): %.2f ms" % t(lambda k: _with_db(r.lookup_instance, m['study_uid'], m['series_uid'], m['sop_uids'][k % 64]), 64))
print("lookup_series (whole 64-slice series, one query):  %.2f ms" % t(lambda k: _with_db(r.lookup_series, m['study_uid'], m['series_uid']), 20))
from models import db as dbmod
print("connection_context + SELECT 1:                     %.2f ms" % t(lambda k: _with_db(dbmod.ping), 64))
print("storage.writable():                                %.2f ms" % t(lambda k: ctx.storage.writable(), 64))
import cProfile, pstats
r._instances._d.clear()
pr = cProfile.Profile(); pr.enable()
for k in range(64):
    r._instances._d.clear(); _with_db(r.lookup_instance, m["study_uid"], m["series_uid"], m["sop_uids"][k])
pr.disable(); pstats.Stats(pr).sort_stats("tottime").print_stats(8)
ctx.close(); subprocess.run(['rm', '-rf', str(tmp)])
