"""N identical nodes (issue 17): two real CloudFilm server processes ("nodes", `./run.sh
serve`, one process each) on one MariaDB database and one data folder, with the same server
key, on two ports, as two app servers behind nginx run. What one node decides, the other
honours:

- a 3-open share opened 10 times in parallel, the opens split across both nodes: exactly 3
  sessions;
- 5 wrong codes spread across both nodes lock the share; 40 parallel wrong codes over both
  nodes compare at most 5 codes;
- an exam's images switched off, a share revoked or a visitor's session ended on node A:
  node B stops serving the exam's frames within 1 s (docs/cluster.md "What every node sees
  at once").

The nodes need MariaDB (SQLite is one machine's file): these tests run in the MariaDB run of
the suite (CLOUDFILM_TEST_DB=mysql ./run.sh test -m db); in the SQLite run they are skipped.
"""
from __future__ import annotations

import concurrent.futures
import os
import random
import secrets
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import requests

from tests.access.conftest import open_share
from tests.conftest import (MYSQL_BASE, MYSQL_DB_PREFIX, ROOT, _mysql_reachable,
                            drop_mysql_database, test_backend)
from tests.dicom_factory import ct_bytes

pytestmark = [pytest.mark.db, pytest.mark.slow]

STUDIES = {   # study UID -> (patient ID, series UID, SOP UIDs)
    "1.2.826.0.1.3680043.8.498.171": ("N2P1", "1.2.826.0.1.3680043.8.498.171.1",
                                      [f"1.2.826.0.1.3680043.8.498.171.1.{i}" for i in range(1, 5)]),
    "1.2.826.0.1.3680043.8.498.172": ("N2P2", "1.2.826.0.1.3680043.8.498.172.1",
                                      [f"1.2.826.0.1.3680043.8.498.172.1.{i}" for i in range(1, 5)]),
}
SWITCHED, SHARED = list(STUDIES)
REQUIRED_S = 1.0         # issue 17: every node honours such a change within 1 s
TEST_LIMIT_S = 0.6       # see assert_stops_in_time
TRIALS = 5


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One CloudFilm node: `./run.sh serve --no-demo` with its own port (one process)."""

    def __init__(self, name: str, env: dict, work: Path):
        self.name, self.work = name, work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "CLOUDFILM_PORT": str(self.port)}
        self.log = work / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([str(ROOT / "run.sh"), "serve", "--no-demo"],
                                         cwd=ROOT, env=self.env, stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited: "
                                   + self.log.read_text(errors="replace")[-3000:])
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"node {self.name} did not answer /healthz within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two nodes on one fresh MariaDB database and one data folder; the test process is
    connected to the same database (to create staff tokens and read the audit)."""
    if test_backend() != "mysql":
        pytest.skip("two nodes need MariaDB: this runs in the MariaDB run of the suite "
                    "(CLOUDFILM_TEST_DB=mysql ./run.sh test -m db)")
    problem = _mysql_reachable()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"MariaDB at {MYSQL_BASE} unreachable in CI: {problem}")
        pytest.skip(f"MariaDB unreachable: {problem}")
    tmp = tmp_path_factory.mktemp("two_nodes")
    name = f"{MYSQL_DB_PREFIX}{secrets.token_hex(4)}"
    url = f"{MYSQL_BASE}/{name}"
    from adapters.importer import Importer
    from server.config import load_config
    from server.context import open_context
    settings = {"database_url": url, "data_dir": str(tmp / "data"),
                "secret_key_file": str(tmp / "secret.key"), "demo_data": False,
                "render_threads": 2, "processes": 1, "dicom_scp_enabled": False,
                "hl7_enabled": False, "log_level": "WARNING",
                # the per-address failure limit stays out of the way: the share's own lock
                # is what these tests are about (all requests come from 127.0.0.1)
                "access_ip_max_failures": 100_000}
    ctx = open_context(load_config(path=tmp / "none.toml", env={}, overrides=settings))
    src = tmp / "in"
    src.mkdir()
    for study, (pid, series, sops) in STUDIES.items():
        for k, sop in enumerate(sops):
            (src / f"{sop}.dcm").write_bytes(ct_bytes(
                patient_id=pid, name="Test^Node", study_uid=study, series_uid=series,
                sop_uid=sop, accession=f"ACC-{pid}", z=float(k), size=32))
    summary = Importer(ctx.catalog).run([src])
    assert summary.imported == sum(len(s[2]) for s in STUDIES.values())
    env = {f"CLOUDFILM_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
           for k, v in settings.items()}
    nodes = [Node("A", env, tmp), Node("B", env, tmp)]
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()
        from tests.conftest import staff_token
        desk = {"Authorization": f"Bearer {staff_token('n2desk', ('frontdesk',))}"}
        yield nodes[0], nodes[1], desk, ctx
    finally:
        for n in nodes:
            n.stop()
        ctx.close()
        drop_mysql_database(name)


def create_share(node, desk, study, **opts):
    r = requests.post(node.url + "/api/shares", json={"study_uid": study, **opts},
                      headers=desk, timeout=30)
    assert r.status_code == 201, r.text
    d = r.json()
    return d["url"].rsplit("/", 1)[1], d["code"], d["share"]["id"]


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10 ** len(code):06d}"


def audit_count(action, outcome=None, object_id=None) -> int:
    from models.db import database
    from models.schema import AuditEvent
    with database.connection_context():
        q = AuditEvent.select().where(AuditEvent.action == action)
        if outcome:
            q = q.where(AuditEvent.outcome == outcome)
        if object_id:
            q = q.where(AuditEvent.object_id == str(object_id))
        return q.count()


# shared counters ---------------------------------------------------------------------------
def test_ten_parallel_opens_over_two_nodes_give_three_sessions(cluster):
    a, b, desk, _ = cluster
    token, code, sid = create_share(a, desk, SHARED, max_opens=3)
    with concurrent.futures.ThreadPoolExecutor(10) as ex:
        codes = list(ex.map(lambda i: open_share((a, b)[i % 2], token, code)[1].status_code,
                            range(10)))
    assert sorted(codes) == [200] * 3 + [410] * 7, codes
    from models.db import database
    from models.schema import Session, Share
    with database.connection_context():
        assert Share.get_by_id(sid).opens == 3
        assert Session.select().where(Session.share == sid).count() == 3


def test_five_wrong_codes_spread_over_two_nodes_lock_the_share(cluster):
    a, b, desk, _ = cluster
    token, code, sid = create_share(a, desk, SHARED)
    statuses = [open_share((a, b)[i % 2], token, wrong(code))[1].status_code
                for i in range(5)]
    assert statuses[:4] == [403] * 4 and statuses[4] in (403, 429), statuses
    for node in (a, b):          # the right code, on either node: locked
        assert open_share(node, token, code)[1].status_code == 429
    assert audit_count("share.locked", object_id=sid) == 1


def test_forty_parallel_wrong_codes_over_two_nodes_compare_at_most_five(cluster):
    a, b, desk, _ = cluster
    token, code, sid = create_share(a, desk, SHARED)
    bad = wrong(code)
    with concurrent.futures.ThreadPoolExecutor(40) as ex:
        statuses = list(ex.map(lambda i: open_share((a, b)[i % 2], token, bad)[1].status_code,
                               range(40)))
    assert set(statuses) <= {403, 429} and 429 in statuses, statuses
    compared = audit_count("share.open", "fail", object_id=sid)   # one per code compared
    assert compared <= 5, f"{compared} codes compared under 40 parallel guesses on 2 nodes"
    assert statuses.count(403) <= 5
    assert audit_count("share.locked", object_id=sid) == 1
    assert open_share(b, token, code)[1].status_code == 429


# changes that take effect at once ------------------------------------------------------------
def frame_paths(study):
    _pid, series, sops = STUDIES[study]
    return [f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1/rendered"
            for sop in sops]


def serving_after(node_b, session, study, change) -> tuple[float, int, list]:
    """Scroll the exam's frames on node B (two requests in flight, as a phone's viewer has)
    while `change()` runs on node A; returns (seconds from the end of the change to the start
    of the last frame node B still served, frames node B served after the change, the
    statuses after the change)."""
    paths = frame_paths(study)
    log: list[tuple[float, int]] = []
    stop = threading.Event()

    def scroll(k):
        i = k
        while not stop.is_set():
            t0 = time.monotonic()
            r = session.get(node_b.url + paths[i % len(paths)], timeout=30)
            log.append((t0, r.status_code))
            i += 1
    threads = [threading.Thread(target=scroll, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    try:
        # node B's caches are warm (the case that lags); the change comes at a random moment
        # of their lifetimes
        time.sleep(0.4 + random.uniform(0.0, 1.0))
        assert log and all(s == 200 for _, s in log), log[-5:]
        change()
        changed = time.monotonic()
        time.sleep(REQUIRED_S + 0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    after = [(t0, s) for t0, s in log if t0 >= changed]
    served = [t0 for t0, s in after if s == 200]
    lag = (max(served) - changed) if served else 0.0
    return lag, len(served), [s for _, s in after]


def assert_stops_in_time(what, trials, refused):
    """`trials`: (lag, frames served, statuses) of each change. The issue asks for 1 s; each
    node re-reads the change marker every change_poll_ms (250 ms), so a change shows within
    about 0.3 s; the test allows TEST_LIMIT_S, which a per-entry cache lifetime of 1 s (the
    lag then falls anywhere between 0 and 1 s) fails with near certainty over TRIALS changes."""
    lags = [lag for lag, _, _ in trials]
    print(f"\n{what}: node B served frames for " + ", ".join(
        f"{lag:.3f} s ({n} frames)" for lag, n, _ in trials) + " after the change on A")
    for lag, served, statuses in trials:
        assert statuses and statuses[-1] in refused, statuses[-5:]
    assert max(lags) < TEST_LIMIT_S, (
        f"{what}: node B went on serving frames up to {max(lags):.2f} s after the change on "
        f"node A (lags {', '.join(f'{x:.2f}' for x in lags)} s)")


def wait_serving(node, session, study, timeout=5.0) -> None:
    path = frame_paths(study)[0]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if session.get(node.url + path, timeout=30).status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("node B does not serve the frames again")


def test_images_switched_off_on_a_stop_frames_on_b_within_a_second(cluster):
    a, b, desk, _ = cluster
    token, code, _sid = create_share(a, desk, SWITCHED)
    s, r = open_share(b, token, code)
    assert r.status_code == 200, r.text

    def switch(enabled):
        r = requests.post(a.url + f"/api/exams/{SWITCHED}/images", json={"enabled": enabled},
                          headers=desk, timeout=30)
        assert r.status_code == 200, r.text
    trials = []
    try:
        for _ in range(TRIALS):
            trials.append(serving_after(b, s, SWITCHED, lambda: switch(False)))
            switch(True)
            wait_serving(b, s, SWITCHED)
    finally:
        switch(True)
    assert_stops_in_time("images switched off", trials, {403})


def test_share_revoked_on_a_stops_frames_on_b_within_a_second(cluster):
    a, b, desk, _ = cluster
    trials = []
    for _ in range(TRIALS):
        token, code, sid = create_share(a, desk, SHARED)
        s, r = open_share(b, token, code)
        assert r.status_code == 200, r.text

        def revoke():
            r = requests.post(a.url + f"/api/shares/{sid}/revoke", json={}, headers=desk,
                              timeout=30)
            assert r.status_code == 200, r.text
        trials.append(serving_after(b, s, SHARED, revoke))
    assert_stops_in_time("share revoked", trials, {401, 403, 404})


def test_session_ended_on_a_stops_frames_on_b_within_a_second(cluster):
    a, b, desk, _ = cluster
    trials = []
    for _ in range(TRIALS):
        token, code, _sid = create_share(a, desk, SHARED)
        s, r = open_share(b, token, code)
        assert r.status_code == 200, r.text
        cookies, csrf = s.cookies.get_dict(), s.headers["X-CSRF-Token"]

        def sign_out():
            # the same phone signs out through node A (nginx sent this request there)
            r = requests.post(a.url + "/api/auth/logout", json={}, cookies=cookies,
                              headers={"X-CSRF-Token": csrf}, timeout=30)
            assert r.status_code == 200, r.text
        trials.append(serving_after(b, s, SHARED, sign_out))
    assert_stops_in_time("session ended", trials, {401, 403, 404})


def test_account_deactivated_on_a_stops_its_frames_on_b_within_a_second(cluster):
    a, b, _desk, _ = cluster
    from tests.conftest import staff_headers, staff_token
    admin = staff_headers("n2admin", ("sysadmin",))
    trials = []
    for k in range(TRIALS):
        name = f"n2doc{k}"
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {staff_token(name, ('doctor',))}"

        def deactivate():
            r = requests.patch(a.url + f"/api/staff/users/{name}", json={"active": False},
                               headers=admin, timeout=30)
            assert r.status_code == 200, r.text
        trials.append(serving_after(b, s, SHARED, deactivate))
    assert_stops_in_time("account deactivated", trials, {401, 403})


# de-duplication of view records --------------------------------------------------------------
def test_one_view_record_per_session_and_series_over_two_nodes(cluster):
    """A phone's frames go to both nodes (nginx hashes on the study, but a node goes down or
    the phone's connections land on both): one series.view record, not one per node."""
    a, b, desk, _ = cluster
    token, code, sid = create_share(a, desk, SHARED)
    s, r = open_share(a, token, code)
    assert r.status_code == 200, r.text
    for path in frame_paths(SHARED) * 2:
        for node in (a, b):
            assert s.get(node.url + path, timeout=30).status_code == 200
    series = STUDIES[SHARED][1]
    from models.db import database
    from models.schema import AuditEvent

    def records():
        with database.connection_context():
            return AuditEvent.select().where(
                (AuditEvent.action == "series.view") & (AuditEvent.object_id == series)
                & (AuditEvent.actor_id == str(sid))).count()
    end = time.monotonic() + 5
    while records() == 0 and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.5)                      # the other node's write, were it to come
    assert records() == 1
