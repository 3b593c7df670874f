"""docs/pacs-qr.md's worked example, in Python and in shell with openssl, gives the token
CloudFilm itself signs and accepts (so a PACS vendor who follows the document is right)."""
from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys

from ..conftest import ROOT

DOC = (ROOT / "docs" / "pacs-qr.md").read_text(encoding="utf-8")
KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")


def _block(lang: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", DOC, re.S)
    (worked,) = [b for b in blocks if "CT20261130001" in b]
    return worked


def _ours() -> str:
    from models.shares import check_pacs_token, sign_pacs_token
    token = sign_pacs_token(KEY, "CT20261130001", dt.datetime(2027, 1, 1))
    assert check_pacs_token(KEY, token)[0] == "CT20261130001"
    return token


def test_the_python_example_gives_our_token():
    out = subprocess.run([sys.executable, "-c", _block("python")], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == _ours()
    assert f"# {out}" in _block("python")             # the printed answer is the real one


def test_the_shell_example_gives_our_token():
    out = subprocess.run(["bash", "-c", _block("sh")], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == _ours()
    assert f"/pacs/t/{out}" in DOC
