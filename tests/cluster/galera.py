"""A throwaway three-node MariaDB Galera cluster on 127.0.0.1 for tests (issue 17).

Each node has its own data directory, client port, socket, pid file and Galera ports
(group communication, IST, SST), small buffers, SST by rsync. Node 1 bootstraps the cluster
(--wsrep-new-cluster); nodes 2 and 3 join it and receive a state snapshot. Grants are skipped
(root without a password, 127.0.0.1 only): never use this outside a test."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pymysql

MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "/usr/bin/mariadb-install-db"
PROVIDER = "/usr/lib/galera/libgalera_smm.so"


def missing_tools() -> list[str]:
    need = [MARIADBD, INSTALL_DB, PROVIDER]
    out = [p for p in need if not os.path.exists(p)]
    out += [t for t in ("rsync", "wsrep_sst_rsync") if shutil.which(t) is None]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GaleraNode:
    def __init__(self, root: Path, n: int):
        self.n = n
        self.dir = root / f"node{n}"
        self.datadir = self.dir / "data"
        self.port, self.gcomm, self.ist, self.sst = (free_port() for _ in range(4))
        self.proc: subprocess.Popen | None = None

    def args(self, cluster_address: str, bootstrap: bool) -> list[str]:
        d = self.dir
        opts = (f"gmcast.listen_addr=tcp://127.0.0.1:{self.gcomm};"
                f"ist.recv_addr=127.0.0.1:{self.ist};gcache.size=32M;"
                "evs.suspect_timeout=PT3S;evs.inactive_timeout=PT6S;"
                "evs.install_timeout=PT6S")
        a = [MARIADBD, "--no-defaults", "--user=root", f"--datadir={self.datadir}",
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--socket={d}/mysqld.sock",
             f"--pid-file={d}/mysqld.pid", f"--log-error={d}/error.log", "--skip-grant-tables",
             "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M",
             "--innodb-flush-log-at-trx-commit=2", "--max-connections=200",
             "--binlog-format=ROW", "--default-storage-engine=InnoDB",
             "--innodb-autoinc-lock-mode=2", "--wsrep-on=ON", f"--wsrep-provider={PROVIDER}",
             f"--wsrep-cluster-address={cluster_address}", "--wsrep-cluster-name=cftest",
             f"--wsrep-node-name=node{self.n}", f"--wsrep-node-address=127.0.0.1:{self.gcomm}",
             f"--wsrep-node-incoming-address=127.0.0.1:{self.port}",
             f"--wsrep-sst-receive-address=127.0.0.1:{self.sst}", "--wsrep-sst-method=rsync",
             f"--wsrep-provider-options={opts}", "--wsrep-slave-threads=2",
             "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci"]
        if bootstrap:
            a.append("--wsrep-new-cluster")
        return a

    def start(self, cluster_address: str, bootstrap: bool = False) -> None:
        log = open(self.dir / "stdout.log", "ab")
        self.proc = subprocess.Popen(self.args(cluster_address, bootstrap), stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def connect(self, database: str | None = None, timeout: float = 3):
        """A connection whose statements (reads and writes) wait until this node has applied
        what the cluster committed before them (wsrep_sync_wait = 15), so a test sees what
        was written through other nodes."""
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root",
                               database=database, connect_timeout=timeout,
                               read_timeout=30, write_timeout=30, autocommit=True,
                               init_command="SET SESSION wsrep_sync_wait = 15")

    def status(self, name: str):
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
                row = cur.fetchone()
                return row[1] if row else None
        finally:
            conn.close()

    def wait_synced(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"galera node {self.n} exited: {self.error_log()}")
            try:
                last = self.status("wsrep_local_state_comment")
                if last == "Synced":
                    return
            except pymysql.err.MySQLError as exc:
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"galera node {self.n} not Synced in {timeout} s ({last}): "
                           f"{self.error_log()}")

    def error_log(self) -> str:
        try:
            return (self.dir / "error.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill9()
        except ProcessLookupError:
            pass


class GaleraCluster:
    def __init__(self, root: Path, size: int = 3):
        self.root = Path(root)
        self.nodes = [GaleraNode(self.root, i + 1) for i in range(size)]

    @property
    def address(self) -> str:
        return "gcomm://" + ",".join(f"127.0.0.1:{n.gcomm}" for n in self.nodes)

    def url(self, i: int, database: str) -> str:
        return f"mysql://root@127.0.0.1:{self.nodes[i].port}/{database}"

    def start(self, timeout: float = 90) -> None:
        template = self.root / "template"
        r = subprocess.run([INSTALL_DB, "--no-defaults", "--user=root",
                            f"--datadir={template}", "--auth-root-authentication-method=normal",
                            "--skip-test-db"], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"mariadb-install-db failed: {r.stdout[-1500:]} {r.stderr[-1500:]}")
        for node in self.nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(template, node.datadir)
            if node is not self.nodes[0] and os.geteuid() == 0:
                # the joiner's rsync daemon (wsrep_sst_rsync) runs as `nobody` when started
                # by root: let it write the snapshot (a real server runs as `mysql`)
                subprocess.run(["chown", "-R", "nobody", str(node.datadir)], check=True)
        first, *others = self.nodes
        first.start(self.address, bootstrap=True)
        first.wait_synced(timeout)
        for node in others:                 # one at a time: each is a donor's SST
            node.start(self.address)
            node.wait_synced(timeout)
        self.wait_size(len(self.nodes), timeout)

    def wait_size(self, size: int, timeout: float, alive=None) -> None:
        nodes = alive or [n for n in self.nodes if n.proc and n.proc.poll() is None]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(int(n.status("wsrep_cluster_size")) == size for n in nodes):
                    return
            except (pymysql.err.MySQLError, TypeError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"galera cluster not of size {size} in {timeout} s")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
