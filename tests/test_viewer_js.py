"""The viewer's pure state modules, tested with node's own test runner (no npm packages)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_node_unit_tests_pass():
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is needed for the viewer's unit tests in CI")
        pytest.skip("node not installed")
    files = sorted(str(p) for p in (ROOT / "tests" / "viewer_js").glob("*.test.mjs"))
    assert files, "no viewer unit tests found"
    r = subprocess.run([node, "--test", *files], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "# fail 0" in r.stdout
