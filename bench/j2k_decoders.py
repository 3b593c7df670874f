"""CPU cost of decoding one lossless JPEG 2000 CT slice (512x512, 16 bit) with every OpenJPEG
binding installed here, next to our whole load path (render.decode.load_image). It is the
floor under the "never-seen J2K series with the copies removed" figure of bench/render_bench.py:
on 2 cores no server can render more frames/s than 2 / (decode CPU per frame).

    .venv/bin/python -m bench.j2k_decoders [--slices 16] [--label NAME]

Uses the render bench's phantom series (bench/lib/phantom.py, /tmp/cfbench-data/j2k300, made
if missing). Saves bench/results/j2k_decoders_<time>.json and .md.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def codestream(path: Path) -> bytes:
    """The J2K codestream inside a single-frame encapsulated file (SOC … EOC)."""
    b = path.read_bytes()
    return b[b.find(b"\xff\x4f\xff\x51"):b.rfind(b"\xff\xd9") + 2]


def best(fn, items, reps: int = 5) -> dict:
    """Best of `reps` passes over items: wall and CPU (process) ms per item."""
    fn(items[0])
    wall = cpu = float("inf")
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        for it in items:
            fn(it)
        wall = min(wall, (time.perf_counter() - t0) / len(items) * 1000)
        cpu = min(cpu, (time.process_time() - c0) / len(items) * 1000)
    return {"wall_ms": round(wall, 2), "cpu_ms": round(cpu, 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--data-dir", default="/tmp/cfbench-data")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    import numpy as np
    import openjpeg
    from PIL import Image

    from bench.lib.phantom import make_series
    from render.decode import load_image
    m = make_series(Path(a.data_dir) / "j2k300", 300, compressed=True, name="J2K^BENCH",
                    series_number=2)
    files = [Path(f) for f in m["files"]][100:100 + a.slices]
    cs = [codestream(f) for f in files]

    def pillow(c):
        im = Image.open(io.BytesIO(c))
        im.load()
        return np.asarray(im)
    rows = {"pylibjpeg-openjpeg openjpeg.decode": best(openjpeg.decode, cs),
            "Pillow JPEG 2000 plugin": best(pillow, cs),
            "ours: render.decode.load_image (file to pixels)": best(load_image, files)}
    try:
        import imagecodecs           # optional: not a dependency of CloudFilm
        rows["imagecodecs.jpeg2k_decode"] = best(imagecodecs.jpeg2k_decode, cs)
    except ImportError:
        pass
    floor = min(r["cpu_ms"] for k, r in rows.items() if not k.startswith("ours"))
    cores = os.cpu_count() or 1
    doc = {"command": "python -m bench.j2k_decoders " + " ".join(sys.argv[1:]),
           "when": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": f"{platform.machine()} {cores} cores",
           "slices": len(cs), "results": rows, "decode_cpu_floor_ms": floor,
           "frames_per_s_ceiling": round(cores * 1000 / floor, 1)}
    out = ROOT / "bench" / "results"
    stem = f"j2k_decoders_{time.strftime('%Y%m%d-%H%M%S')}" + (f"-{a.label}" if a.label else "")
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    md = [f"# Decoding a lossless J2K CT slice (512x512, 16 bit) ({doc['when']})", "",
          f"Machine: {doc['machine']}; {len(cs)} slices, best of 5 passes.",
          "Reproduce: `.venv/bin/python -m bench.j2k_decoders`", "",
          "| decoder | CPU ms / slice | wall ms / slice |", "|---|---|---|"]
    md += [f"| {k} | {r['cpu_ms']} | {r['wall_ms']} |" for k, r in rows.items()]
    md += ["", f"Decode alone: at least {floor} ms of CPU per frame, so {cores} cores render at "
               f"most {doc['frames_per_s_ceiling']} never-seen J2K frames/s, whatever the "
               "server."]
    (out / f"{stem}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
