"""Ingest answers never wait for optional work (issue 15, item 9): fast copies of
compressed instances received over DICOM are made after the sender pauses, in a
low-priority worker process that ends when the queue is empty."""
from __future__ import annotations

import time

import pytest

from models.schema import Instance
from tests.conftest import corpus_dir

from .test_dicom_scp import storescu

pytestmark = pytest.mark.db
LOSSLESS, LOSSY = ("MR2_J2KR.dcm", "US1_J2KR.dcm"), ("RG1_J2KI.dcm",)


@pytest.fixture
def scp(ctx):
    from adapters.dicom_net import DicomScp
    s = DicomScp(ctx.catalog, ae_title="CLOUDFILM", host="127.0.0.1", port=0,
                 allowed_aets=["STORESCU"], fast_copies=True).start()
    s.sink.copies.quiet_s = 1.0
    yield s
    s.stop()


def _copies(ctx) -> list[bool]:
    st = ctx.storage
    return [st.exists(st.fast_copy_of(i.file_path)) for i in Instance.select()]


def test_copies_wait_for_a_quiet_moment_then_are_made(scp, ctx):
    t0 = time.monotonic()
    for names, propose in ((LOSSLESS, "-xv"), (LOSSY, "-xw")):     # sent as stored (J2K)
        out = storescu(scp.port, [corpus_dir() / n for n in names], extra=(propose,))
        assert out.returncode == 0 and "Failed" not in out.stderr, out.stderr
    assert Instance.select().count() == 3
    copies = scp.sink.copies
    if time.monotonic() - t0 < copies.quiet_s:
        assert not any(_copies(ctx))              # nothing made while instances arrive
    assert copies.wait_idle(120)
    assert all(_copies(ctx)) and copies.made >= 2
    # and the WADO-RS metadata of every instance, made the same way (issue 16: cold ≤ 200 ms)
    st = ctx.storage
    for i in Instance.select():
        head = st.read(st.metadata_of(i.file_path)).split(b"\n", 1)[0]
        assert head == f"cfmeta1 {i.sha256}".encode()
    assert copies._pool is None and copies._thread is None     # nothing left running


def test_activity_holds_the_copies_back(ctx, tmp_path):
    from adapters.fast_copy import BackgroundCopies
    st = ctx.storage
    src = corpus_dir() / "MR2_J2KR.dcm"
    rel = st.instance_relpath("1.2.3", "1.2.3.4", "1.2.3.4.5")
    st.put_atomic(rel, src.read_bytes())
    copies = BackgroundCopies(st, quiet_s=0.6)
    copies.add(rel, st.fast_copy_of(rel))
    for _ in range(8):                           # a sender still sending: 1.6 s of arrivals
        copies.activity()
        time.sleep(0.2)
        assert not st.exists(st.fast_copy_of(rel))
    assert copies.wait_idle(120) and st.exists(st.fast_copy_of(rel))
    copies.close()
