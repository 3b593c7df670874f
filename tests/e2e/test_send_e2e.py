"""Send to workstation in the browser: a doctor in the comparison workspace clicks
发送到工作站, picks the destination, and sees the progress line reach 完成 while the outbox
delivers the exam to dcmtk's storescp. Screenshot: tests/artifacts/viewer_send_*.png."""
from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from tests.integration.conftest import need
from tests.integration.test_qr_scp import _free_port

from .conftest import _need_chromium, live_demo, shot, signed_in

pytestmark = pytest.mark.db


@pytest.fixture(scope="module")
def workstation(tmp_path_factory):
    port = _free_port()
    recv = tmp_path_factory.mktemp("ws_recv")
    p = subprocess.Popen([need("storescp"), "-aet", "WS1", "+xa", "-od", str(recv), "-uf",
                          str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield port, recv
    p.terminate()
    p.wait(10)


@pytest.fixture(scope="module")
def send_server(tmp_path_factory, workstation):
    _need_chromium()
    from adapters.outbox import OutboxSettings, OutboxWorker
    from server import integration
    with live_demo(tmp_path_factory.mktemp("send"),
                   dicom_peers=f"WS1=127.0.0.1:{workstation[0]}") as server:
        async def start():
            return OutboxWorker(OutboxSettings(max_attempts=3, backoff_s=1, backoff_max_s=1,
                                               poll_s=0.2)).start()
        worker = asyncio.run_coroutine_threadsafe(start(), server.loop).result(10)
        integration.SERVICES.outbox = worker
        yield server
        integration.SERVICES.outbox = None
        asyncio.run_coroutine_threadsafe(worker.stop(), server.loop).result(10)


def test_doctor_sends_exam_from_workspace(browser, send_server, workstation):
    context = signed_in(browser, send_server, viewport={"width": 1400, "height": 850},
                        locale="zh-CN")
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{send_server.url}/workspace?patient_id=DF100231")
    btn = page.locator("#send-ws")
    btn.wait_for(timeout=20000)
    assert btn.inner_text() == "发送到工作站"
    btn.click()
    page.locator("#send-dialog").wait_for()
    assert page.locator("#send-dest option").all_inner_texts() == ["WS1"]
    page.select_option("#send-dest", "WS1")
    shot(page, "send_dialog")
    page.click("#send-go")
    line = page.locator("#send-progress")
    page.wait_for_function(
        "() => document.querySelector('#send-progress').dataset.status === 'done'",
        timeout=60000)
    text = line.inner_text()
    assert "完成" in text and "WS1" in text
    sent, total = text.split("：")[1].split(" ")[0].split("/")
    assert sent == total and int(total) > 0
    shot(page, "send_done")
    end = time.time() + 10
    while time.time() < end and len(list(workstation[1].iterdir())) < int(total):
        time.sleep(0.1)
    assert len(list(workstation[1].iterdir())) == int(total)
    assert not errors
    context.close()
