"""conf/nginx/cloudfilm-cluster.conf with two real CloudFilm nodes (one database, one storage
folder, one secret key) behind a real nginx (issue 17, item 2): every image request of a study
reaches the same node, the other requests are shared by both, and when a node stops the other
answers everything."""
from __future__ import annotations

import ssl
import subprocess
import time
import urllib.request

import pytest

from bench.lib.cloudfilm import CloudFilmServer
from tests.dicom_factory import ct_dataset, to_bytes
from tests.security.test_nginx import NGINX, _free_port, _need_nginx, prepare_site

pytestmark = pytest.mark.slow
STUDIES = [f"1.2.826.0.1.3680043.8.498.175{k:02d}" for k in range(12)]


@pytest.fixture
def cluster(tmp_path):
    _need_nginx()
    shared = tmp_path / "shared"                 # the database, storage and key of both
    src = tmp_path / "in"
    src.mkdir()
    for s in STUDIES:
        ds = ct_dataset(patient_id="CL" + s[-2:], study_uid=s, series_uid=s + ".1",
                        sop_uid=s + ".1.1", size=64)
        (src / f"{s}.dcm").write_bytes(to_bytes(ds))
    env = {"CLOUDFILM_DATABASE_URL": f"sqlite:///{shared}/db.sqlite",
           "CLOUDFILM_DATA_DIR": str(shared / "data"),
           "CLOUDFILM_SECRET_KEY_FILE": str(shared / "key"),
           "CLOUDFILM_TRUSTED_PROXIES": "127.0.0.1/32", "CLOUDFILM_LOG_LEVEL": "INFO"}
    shared.mkdir()
    nodes = [CloudFilmServer(tmp_path / f"node{i}", processes=1, env=env) for i in (1, 2)]
    nodes[0].import_paths([src])
    token = nodes[0].provision_token()
    for n in nodes:
        n.start()
    https_port = _free_port()
    cert = prepare_site(tmp_path, "cloudfilm-cluster.conf",
                        {8080: nodes[0].port, 8081: nodes[1].port}, _free_port(), https_port)
    proc = subprocess.Popen([NGINX, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path),
                             "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    tls = ssl.create_default_context(cafile=str(cert))

    def get(path):
        req = urllib.request.Request(f"https://127.0.0.1:{https_port}{path}",
                                     headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, context=tls, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
    deadline = time.time() + 20
    while True:
        try:
            if get("/healthz")[0] == 200:
                break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.3)
    yield nodes, get
    proc.terminate()
    proc.wait(10)
    for n in nodes:
        n.stop()


def _frame(study):
    return f"/dicomweb/studies/{study}/series/{study}.1/instances/{study}.1.1/rendered"


def _served(node, path) -> int:
    log = (node.work / "server.log").read_text(errors="replace")
    return sum(1 for line in log.splitlines() if " GET " in line and path in line)


def test_images_stick_to_a_node_and_a_stopped_node_is_passed_by(cluster):
    nodes, get = cluster
    for _ in range(4):
        for s in STUDIES:
            status, body = get(_frame(s))
            assert status == 200 and body[:2] == b"\xff\xd8"
    time.sleep(0.5)                               # the access lines are written
    owner = {}
    for s in STUDIES:
        counts = [_served(n, _frame(s)) for n in nodes]
        assert sorted(counts) == [0, 4], (s, counts)   # all four on one node
        owner[s] = counts.index(4)
    assert set(owner.values()) == {0, 1}         # twelve studies spread over both nodes
    for _ in range(10):                           # the rest goes to both
        assert get("/api/studies?limit=5")[0] == 200
    time.sleep(0.5)
    assert all(_served(n, "/api/studies") > 0 for n in nodes)
    # node 1 stops: its studies' images and everything else come from node 2
    nodes[0].stop()
    for s in STUDIES:
        status, body = get(_frame(s))
        assert status == 200 and body[:2] == b"\xff\xd8", (s, status, body[:200])
    assert all(get("/api/studies?limit=5")[0] == 200 for _ in range(5))
    moved = [s for s in STUDIES if owner[s] == 0]
    time.sleep(0.5)
    assert all(_served(nodes[1], _frame(s)) >= 1 for s in moved)
