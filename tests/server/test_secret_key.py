"""The secret key file made on first start (server/context.py load_secret_key). Two nodes
started together on one shared folder made it at the same moment through one fixed temporary
name, and one of them died: "No such file or directory: …/secret.key.tmp" (the other had
already linked and removed it; seen in tests/cluster/test_galera.py). Every starter must end
with the same key and no temporary file left behind."""
from __future__ import annotations

import threading

from server.context import load_secret_key


def test_many_starters_at_once_get_one_key(tmp_path):
    path = tmp_path / "shared" / "secret.key"
    n = 24
    barrier = threading.Barrier(n)
    keys, errors = [], []

    def start():
        barrier.wait()
        try:
            keys.append(load_secret_key(path))
        except BaseException as exc:  # noqa: BLE001 - the test reports every failure
            errors.append(repr(exc))
    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(keys) == n and len(set(keys)) == 1 and len(keys[0]) == 32
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]
    assert (path.stat().st_mode & 0o777) == 0o600
