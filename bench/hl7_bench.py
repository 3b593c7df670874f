"""HL7 v2 over MLLP: messages per second with ACK, over one connection and over four.

Starts CloudFilm (`server.cli serve`, SQLite in a temp folder, HL7 listener on) and sends,
waiting for each ACK before the next message on its connection:

- ADT^A08 patient updates (issue 15's figure: >= 300 msg/s over 1 connection, >= 500 over 4):
  200 patients, each message changes the patient's name, so every message is a real write
  (patient row + the sealed message log row) committed before its ACK;
- ORM^O01 new orders (patient upsert + exam insert + message log), as an extra row.

Prints and saves bench/results/hl7_<time>.json and .md.

    .venv/bin/python -m bench.hl7_bench [--messages 2000] [--only ADT] [--label after]
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


TARGETS = {1: 300, 4: 500}      # ADT^A08 messages per second (issue 15)
NAMES = ["张^伟", "王^芳", "李^娜", "刘^洋", "陈^静"]


def adt_a08(tag: str, i: int) -> str:
    return S.adt(f"{tag}{i}", pid=f"{tag}P{i % 200}", name=NAMES[i % len(NAMES)],
                 trigger="A08")


def orm_o01(tag: str, i: int) -> str:
    return S.orm(f"{tag}{i}", f"{tag}A{i}", pid=f"{tag}P{i % 200}")


KINDS = {"ADT": ("ADT^A08", adt_a08, "ADT^A08 patient update (patient row + sealed message "
                                     "log) with ACK"),
         "ORM": ("ORM^O01", orm_o01, "ORM^O01 new order (patient upsert + exam insert + "
                                     "sealed message log) with ACK")}


def sender(port: int, msgs: list[tuple[str, str]], out: list) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ok = 0
        for ctrl, text in msgs:
            s.sendall(S.frame(text))
            buf = b""
            while not buf.endswith(b"\x1c\r"):
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                buf += chunk
            ok += b"MSA|AA|" in buf
        out.append(ok)


def run(port: int, n: int, conns: int, tag: str, make=orm_o01) -> dict:
    msgs = [(f"{tag}{i}", make(tag, i)) for i in range(n)]
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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=2000, help="per run (default 2000)")
    p.add_argument("--only", choices=sorted(KINDS), help="one message kind (default: both)")
    p.add_argument("--label", default="", help="added to the result file names")
    a = p.parse_args()
    kinds = [a.only] if a.only else ["ADT", "ORM"]
    results = []
    with tempfile.TemporaryDirectory(prefix="cf-hl7bench-") as tmp:
        srv = Server(Path(tmp), receiver_port=9)
        srv.conf.write_text(srv.conf.read_text().replace('hl7_receivers = "127.0.0.1:9"',
                                                         'hl7_receivers = ""'))
        srv.start()
        try:
            run(srv.hl7, 200, 1, "W")                        # warm-up
            for k in kinds:
                mtype, make, _ = KINDS[k]
                for conns, tag in ((1, "A"), (4, "B")):
                    r = run(srv.hl7, a.messages, conns, f"{k}{tag}", make)
                    results.append({"message": mtype, **r})
        finally:
            srv.stop()
    doc = {"bench": "hl7", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": f"{platform.machine()} {os.cpu_count()} cores", "database": "SQLite (WAL)",
           "messages": {KINDS[k][0]: KINDS[k][2] for k in kinds}, "results": results}
    for r in results:
        print(f"HL7 {r['message']} with ACK, {r['connections']} connection(s): "
              f"{r['msgs_per_s']:.0f} msgs/s ({r['acked_AA']}/{r['messages']} AA)")
    stem = f"hl7_{time.strftime('%Y%m%d-%H%M%S')}" + (f"-{a.label}" if a.label else "")
    out = ROOT / "bench" / "results" / f"{stem}.json"
    out.write_text(json.dumps(doc, indent=1))
    rows = [f"# HL7 v2 over MLLP: messages per second with ACK ({doc['time']})", "",
            f"Machine: {doc['machine']}; database {doc['database']}.", ""]
    rows += [f"- {m}: {d}" for m, d in doc["messages"].items()]
    rows += ["", f"Reproduce: `.venv/bin/python -m bench.hl7_bench --messages {a.messages}`",
             "", "| message | connections | messages | AA | wall s | msgs/s | target |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        goal = TARGETS[r["connections"]]
        verdict = "pass" if r["msgs_per_s"] >= goal and r["acked_AA"] == r["messages"] \
            else "FAIL"
        target = f"≥ {goal} ({verdict})" if r["message"] == "ADT^A08" else \
            f"(extra; ≥ {goal} would be {verdict.lower()})"
        rows.append(f"| {r['message']} | {r['connections']} | {r['messages']} | "
                    f"{r['acked_AA']} | {r['wall_s']} | {r['msgs_per_s']:.0f} | {target} |")
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print(f"saved {out.relative_to(ROOT)} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
