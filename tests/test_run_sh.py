"""`./run.sh` end to end: first start builds the database and demo data and serves;
the second start reuses everything and serves within seconds."""
import collections
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(env, log):
    return subprocess.Popen([str(ROOT / "run.sh")], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(port, proc, timeout):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            time.sleep(0.2)
    return None


def get_json(port, path, token):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def cli(env, *args):
    r = subprocess.run([str(ROOT / "run.sh"), *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def stop(proc):
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_first_and_second_start(tmp_path):
    port = free_port()
    env = dict(os.environ, CLOUDFILM_DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite",
               CLOUDFILM_DATA_DIR=str(tmp_path / "data"),
               CLOUDFILM_SECRET_KEY_FILE=str(tmp_path / "secret.key"),
               CLOUDFILM_PORT=str(port), CLOUDFILM_DEMO_CT_SLICES="24")
    env.pop("CLOUDFILM_ADMIN_PASSWORD", None)
    env.pop("CLOUDFILM_PROCESSES", None)        # the default: one process per core
    log1 = tmp_path / "first.log"
    with open(log1, "w") as fh:
        proc = start(env, fh)
        try:
            took = wait_healthy(port, proc, 240)
            assert took is not None, log1.read_text()
            # one server process per core by default (the parent forks them)
            from server.cli import child_pids
            cores = os.cpu_count() or 1
            assert cores == 1 or len(child_pids(proc.pid)) >= cores, log1.read_text()
            # anonymous: no patient data
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10)
                raise AssertionError("anonymous request was served")
            except urllib.error.HTTPError as e:
                assert e.code == 401
            cli(dict(env, CLOUDFILM_NEW_USER_PASSWORD="Reader-Pass-9"), "user-add", "doc",
                "--roles", "doctor", "--no-change")
            token = cli(env, "token", "doc").strip()
            assert token.startswith("cft_")
            studies = get_json(port, "/api/studies", token)["studies"]
            assert {s["category"] for s in studies} == {"radiology", "ultrasound", "endoscopy",
                                                        "pathology"}
            # a patient with a CT and its prior (the hanging protocol) ...
            ct = [s for s in studies if s["modality"] == "CT"]
            per_patient = collections.Counter(s["patient"]["patient_id"] for s in ct)
            pair = [s for s in ct if per_patient[s["patient"]["patient_id"]] == 2]
            assert len(pair) == 2 and pair[0]["exam_date"] != pair[1]["exam_date"]
            # ... and one with all four kinds of image (R2.5 out of the box)
            kinds = collections.defaultdict(set)
            for s in studies:
                kinds[s["patient"]["patient_id"]].add(s["category"])
            assert {"radiology", "ultrasound", "endoscopy", "pathology"} in kinds.values()
            assert all(s["status"] == "reported" for s in studies)
        finally:
            stop(proc)
    out = log1.read_text()
    assert f"http://127.0.0.1:{port}/" in out
    assert "password" in out
    # the generated password is stored only hashed
    import sqlite3
    con = sqlite3.connect(tmp_path / "db.sqlite")
    (h,) = con.execute("select password_hash from staff_user where username='admin'").fetchone()
    con.close()
    printed = out.split("password: ")[1].split()[0]
    assert printed not in h and h.startswith("scrypt$")

    log2 = tmp_path / "second.log"
    with open(log2, "w") as fh:
        proc = start(env, fh)
        try:
            took = wait_healthy(port, proc, 60)
            assert took is not None and took < 20, log2.read_text()
            assert len(get_json(port, "/api/studies", token)["studies"]) == len(studies)
        finally:
            stop(proc)
    out2 = log2.read_text()
    assert "demo data loaded" not in out2 and "password:" not in out2


def test_bad_setting_stops_start_up_with_its_name(tmp_path):
    env = dict(os.environ, CLOUDFILM_PORT="eighty")
    r = subprocess.run([str(ROOT / "run.sh"), "check-config"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "port" in r.stderr


def test_install_service_writes_a_unit(tmp_path):
    r = subprocess.run([str(ROOT / "run.sh"), "install-service", "--dest", str(tmp_path),
                        "--no-enable", "--user", "cloudfilm"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    unit = (tmp_path / "cloudfilm.service").read_text()
    assert "Restart=always" in unit and "WantedBy=multi-user.target" in unit
    assert f"ExecStart={ROOT}/run.sh serve" in unit and "User=cloudfilm" in unit
    assert "After=network-online.target" in unit and "mariadb.service" in unit
