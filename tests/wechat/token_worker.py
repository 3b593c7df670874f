"""One 'worker process' for the shared-token test: connects to the same database as the
test, waits for the common start time, asks for the access token, prints it as JSON."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    url, api_base, app_id, secret, start_at = sys.argv[1:6]
    from models import db as dbmod
    dbmod.connect(url, root=ROOT)
    from adapters.wechat import WechatService, WechatSettings
    s = WechatSettings(app_id=app_id, app_secret=secret, token="t0ken", aes_key="x" * 43,
                       public_url="http://127.0.0.1", api_base_url=api_base, timeout_s=5)
    svc = WechatService(s)
    with dbmod.database.connection_context():
        while time.time() < float(start_at):
            time.sleep(0.001)
        token = svc.token.get()
        again = svc.token.get()
    print(json.dumps({"token": token, "again": again, "owner": svc.owner}))


if __name__ == "__main__":
    main()
