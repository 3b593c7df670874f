"""Run inside the PACS's network namespace (see test_pacs_orthanc.py): C-GET each named
study from the PACS into a fresh CloudFilm context and print, as JSON, the transfer syntax
each instance was stored in, and the retrieve job's status after the data later arrives
another way."""
from __future__ import annotations

import argparse
import json
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tmp", required=True)
    p.add_argument("--pacs-port", type=int, default=4242)
    p.add_argument("studies", nargs="+")
    a = p.parse_args()
    import logging
    logging.basicConfig(level=logging.WARNING)
    from adapters.dicom_net import InstanceSink, PacsNode, retrieve_study
    from models.catalog import exam_instances, find_exam
    from models.integration import retrieve_job_start, retrieve_job_update, retrieve_progress
    from server.config import load_config
    from server.context import open_context
    cfg = load_config(path=f"{a.tmp}/none.toml", env={}, overrides={
        "database_url": f"sqlite:///{a.tmp}/g.db", "data_dir": f"{a.tmp}/data",
        "secret_key_file": f"{a.tmp}/secret.key", "demo_data": False, "render_threads": 1,
        "pacs_ae_title": "ORTHANC", "pacs_host": "127.0.0.1", "pacs_port": a.pacs_port,
        "pacs_retrieve": "get"})
    ctx = open_context(cfg)
    node = PacsNode.from_config(cfg)
    out = {"syntaxes": {}, "results": {}}
    for uid in a.studies:
        sink = InstanceSink(ctx.catalog, fast_copies=False)
        retrieve_job_start(uid)
        try:
            out["results"][uid] = retrieve_study(node, uid, method="get", sink=sink)
        except Exception as exc:  # noqa: BLE001 - reported, the test decides
            out["results"][uid] = {"error": f"{type(exc).__name__}: {exc}"}
        exam = find_exam(study_uid=uid)
        for inst in (exam_instances(exam) if exam is not None else []):
            out["syntaxes"][inst.sop_uid] = inst.transfer_syntax
    # a job that failed, whose images then arrived another way, shows done
    first = a.studies[0]
    retrieve_job_update(first, status="failed", error="association aborted")
    out["later"] = retrieve_progress(first)
    ctx.close()
    print(json.dumps(out, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
