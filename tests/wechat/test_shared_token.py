"""One access token per deployment: two real processes asking at the same moment for a token
that is missing cause one refresh at WeChat, and both use the same token."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.db import database
from models.wechat import WechatCredential

from .fake_wechat import APP_ID, APP_SECRET

pytestmark = pytest.mark.db
WORKER = Path(__file__).with_name("token_worker.py")


def run_pair(ctx, fake, n=2):
    start_at = time.time() + 1.5                   # both are up and waiting by then
    procs = [subprocess.Popen([sys.executable, str(WORKER), ctx.config.database_url,
                               fake.api_base, APP_ID, APP_SECRET, str(start_at)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


def test_two_processes_refresh_once(ctx, fake):
    fake.token_delay_s = 0.4           # a slow WeChat widens the race window
    outs = run_pair(ctx, fake)
    assert fake.token_calls == 1, fake.requests
    assert len({o["token"] for o in outs}) == 1 and all(o["again"] == o["token"] for o in outs)
    assert outs[0]["owner"] != outs[1]["owner"]
    with database.connection_context():
        row = WechatCredential.get((WechatCredential.appid == APP_ID)
                                   & (WechatCredential.kind == "access_token"))
    assert row.value == outs[0]["token"] and row.refreshes == 1 and row.lease_owner == ""
    # a fresh token in the database is used as it is: no call at all
    outs = run_pair(ctx, fake)
    assert fake.token_calls == 1 and {o["token"] for o in outs} == {row.value}
