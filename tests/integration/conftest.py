"""Fixtures for the integration tests: an HL7 listener in its own event loop thread, a
DICOM listener, helpers to send with real peers (mllp_send, dcmtk)."""
from __future__ import annotations

import asyncio
import shutil
import threading

import pytest


class LoopThread:
    """An asyncio loop in a thread, for servers under test."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def loop_thread():
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def hl7_server(ctx, loop_thread):
    """Our MLLP listener on 127.0.0.1:<free port>, applying to the test database."""
    from server import integration
    listener = loop_thread.run(integration.start_hl7(ctx, "127.0.0.1", 0))
    yield listener
    loop_thread.run(listener.stop())
    if integration.SERVICES.hl7_executor:
        integration.SERVICES.hl7_executor.shutdown(wait=True)
    integration.SERVICES.__init__()


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: apt-get install dcmtk (see .ci/run)")
    return path
