"""Run wrk (C load generator) with a Lua script that sets headers and cycles paths.

``run_wrk(base, paths, ...)`` returns requests/s, latency percentiles and error counts.
``random_viewport`` makes every request a different viewport (vw and vh each random in
256..512: a downscaled, uncached render, no larger than the native 512x512).
``prefix`` runs wrk under another command (``ip netns exec cfbench``).
"""
from __future__ import annotations

import json
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

LUA = r"""
local paths = {%(paths)s}
local i = %(offset)d
local random_viewport = %(random)s
local vmin, vmax = %(vmin)d, %(vmax)d
math.randomseed(os.time())
%(headers)s
request = function()
  i = i + 1
  local p = paths[(i %% #paths) + 1]
  if random_viewport then
    p = p .. "&viewport=" .. math.random(vmin, vmax) .. "," .. math.random(vmin, vmax)
  end
  return wrk.format("GET", p)
end
done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"status_errors":%%d,' ..
    '"connect":%%d,"read":%%d,"write":%%d,"timeout":%%d,"p50_us":%%d,"p90_us":%%d,' ..
    '"p99_us":%%d,"mean_us":%%f}\n',
    summary.requests, summary.duration, summary.bytes, summary.errors.status,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


def lua_script(paths: list[str], headers: dict, random_viewport: bool = False,
               offset: int = 0, viewport_range: tuple[int, int] = (256, 512)) -> str:
    def q(s):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return LUA % {
        "paths": ",".join(q(p) for p in paths),
        "offset": offset,
        "random": "true" if random_viewport else "false",
        "vmin": viewport_range[0], "vmax": viewport_range[1],
        "headers": "\n".join(f"wrk.headers[{q(k)}] = {q(v)}" for k, v in headers.items()),
    }


def run_wrk(base: str, paths: list[str], *, headers: dict | None = None, connections: int = 8,
            threads: int = 1, duration: float = 10.0, random_viewport: bool = False,
            prefix: list[str] | None = None, timeout_s: int = 30) -> dict:
    host = urllib.parse.urlsplit(base).hostname
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"wrk only against loopback, not {base!r}")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(lua_script(paths, headers or {}, random_viewport))
        script = fh.name
    cmd = list(prefix or []) + ["wrk", "-t", str(threads), "-c", str(connections),
                                "-d", f"{max(1, round(duration))}s", "--timeout",
                                f"{timeout_s}s", "-s", script, base + paths[0]]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             timeout=duration + timeout_s + 30).stdout
    finally:
        Path(script).unlink(missing_ok=True)
    line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
    r = json.loads(line[len("WRKJSON "):])
    secs = r["duration_us"] / 1e6
    r["rps"] = r["requests"] / secs if secs else 0.0
    r["errors"] = (r["status_errors"] + r["connect"] + r["read"] + r["write"] + r["timeout"])
    r["connections"] = connections
    return r
