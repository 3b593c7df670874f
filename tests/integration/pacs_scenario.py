"""Run inside the PACS's network namespace (see test_pacs_orthanc.py): a CloudFilm context
with its DICOM listener, then C-FIND of the patient's history in the PACS, the exam listed
before it is held, the retrieve with its progress, and the exam afterwards. Prints JSON."""
from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tmp", required=True)
    p.add_argument("--patient", required=True)
    p.add_argument("--pacs-port", type=int, default=4242)
    p.add_argument("--scp-port", type=int, default=11112)
    p.add_argument("--method", default="move")
    a = p.parse_args()
    import logging
    logging.basicConfig(level=logging.WARNING)
    from adapters.dicom_net import DicomScp, PacsNode, find_patient_studies
    from models.integration import record_remote_studies, retrieve_progress
    from server import integration
    from server.config import load_config
    from server.context import open_context
    cfg = load_config(path=f"{a.tmp}/none.toml", env={}, overrides={
        "database_url": f"sqlite:///{a.tmp}/q.db", "data_dir": f"{a.tmp}/data",
        "secret_key_file": f"{a.tmp}/secret.key", "demo_data": False, "render_threads": 1,
        "pacs_ae_title": "ORTHANC", "pacs_host": "127.0.0.1", "pacs_port": a.pacs_port,
        "pacs_retrieve": a.method, "dicom_port": a.scp_port})
    ctx = open_context(cfg)
    scp = DicomScp(ctx.catalog, port=a.scp_port, allowed_aets=["ORTHANC"],
                   fast_copies=False).start()
    out = {}
    node = PacsNode.from_config(cfg)
    patient, studies = find_patient_studies(node, a.patient)
    out["patient_name"] = patient.get("name")
    listed = record_remote_studies(ctx.catalog, patient, studies)
    out["listed"] = listed
    out["before"] = ctx.catalog.find_studies(patient_id=a.patient)["studies"]
    timeline = []
    for s in listed:
        uid = s["study_uid"]
        t0 = time.monotonic()
        integration.start_retrieve(ctx, uid)
        first = None
        while True:
            pr = retrieve_progress(uid)
            if first is None and pr["first_image_ready"]:
                first = time.monotonic() - t0
                study = ctx.catalog.get_study(uid)
                out.setdefault("first_view", study["series"][0]["num_instances"])
            timeline.append((round(time.monotonic() - t0, 3), pr.get("completed"),
                             pr.get("expected"), pr["instances_here"]))
            if pr["status"] in ("done", "failed"):
                break
            if time.monotonic() - t0 > 120:
                pr["status"] = "timeout"
                break
            time.sleep(0.05)
        out.setdefault("retrieves", []).append({"study_uid": uid, "progress": pr,
                                                "first_image_s": first,
                                                "total_s": time.monotonic() - t0})
    out["timeline"] = timeline[-5:]
    out["after"] = ctx.catalog.find_studies(patient_id=a.patient)["studies"]
    scp.stop()
    ctx.close()
    print(json.dumps(out, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
