"""HL7 v2 over MLLP: messages per second with ACK, over one connection and over four.

Starts CloudFilm (`server.cli serve`, SQLite in a temp folder, HL7 listener on) and sends
ORM^O01 orders (each a new exam: a real write per message), waiting for each ACK before the
next message on its connection. Prints and saves bench/results/hl7_<time>.json.

    .venv/bin/python -m bench.hl7_bench [--messages 2000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration import hl7_samples as S  # noqa: E402
from tests.integration.test_kill import Server  # noqa: E402


TARGETS = {1: 300, 4: 500}      # messages per second (issue 15)


def sender(port: int, msgs: list[tuple[str, str]], out: list) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ok = 0
        for ctrl, text in msgs:
            s.sendall(S.frame(text))
            buf = b""
            while not buf.endswith(b"\x1c\r"):
                buf += s.recv(65536)
            ok += b"MSA|AA|" in buf
        out.append(ok)


def run(port: int, n: int, conns: int, tag: str) -> dict:
    msgs = [(f"{tag}{i}", S.orm(f"{tag}{i}", f"{tag}A{i}", pid=f"{tag}P{i % 200}"))
            for i in range(n)]
    parts = [msgs[i::conns] for i in range(conns)]
    out: list[int] = []
    threads = [threading.Thread(target=sender, args=(port, p, out)) for p in parts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"connections": conns, "messages": n, "acked_AA": sum(out), "wall_s": round(wall, 3),
            "msgs_per_s": round(n / wall, 1)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=2000)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="cf-hl7bench-") as tmp:
        srv = Server(Path(tmp), receiver_port=9)
        srv.conf.write_text(srv.conf.read_text().replace('hl7_receivers = "127.0.0.1:9"',
                                                         'hl7_receivers = ""'))
        srv.start()
        try:
            run(srv.hl7, 200, 1, "W")                        # warm-up
            results = [run(srv.hl7, a.messages, 1, "A"), run(srv.hl7, a.messages, 4, "B")]
        finally:
            srv.stop()
    doc = {"bench": "hl7", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": f"{platform.machine()} {os.cpu_count()} cores", "database": "SQLite (WAL)",
           "message": "ORM^O01 new order (patient upsert + exam insert + message log) with ACK",
           "results": results}
    for r in results:
        print(f"HL7 ORM^O01 with ACK, {r['connections']} connection(s): "
              f"{r['msgs_per_s']:.0f} msgs/s ({r['acked_AA']}/{r['messages']} AA)")
    out = ROOT / "bench" / "results" / f"hl7_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(doc, indent=1))
    rows = [f"# HL7 v2 over MLLP: messages per second with ACK ({doc['time']})", "",
            f"Machine: {doc['machine']}; database {doc['database']}; message: {doc['message']}.",
            "Reproduce: `.venv/bin/python -m bench.hl7_bench`", "",
            "| connections | messages | AA | wall s | msgs/s | target |", "|---|---|---|---|---|---|"]
    for r in results:
        goal = TARGETS[r["connections"]]
        rows.append(f"| {r['connections']} | {r['messages']} | {r['acked_AA']} | {r['wall_s']} "
                    f"| {r['msgs_per_s']:.0f} | ≥ {goal} "
                    f"({'pass' if r['msgs_per_s'] >= goal else 'FAIL'}) |")
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print(f"saved {out.relative_to(ROOT)} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
