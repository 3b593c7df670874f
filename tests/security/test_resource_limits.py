"""Resource limits where untrusted data arrives (issue 14, item 4).

A decompression bomb (a tiny JPEG-LS / RLE Pixel Data whose header says 16384 x 16384) is
refused from its header, without decoding, at every entry point: file import, C-STORE
(0xA700, real pynetdicom association), STOW-RS (FailedSOPSequence), the fast-copy path
and render (422); so is a small header in front of a big codestream. Compressed data
decodes only in worker processes with an address-space limit (render, fast copies, WADO-RS
and C-GET transcoding), and a worker that dies leaves a fresh pool. HL7: the cap and the idle
timeout, with real sockets. Render sizes are capped per caller and the fair scheduler
serves light frames and other principals before one principal's heavy renders."""
from __future__ import annotations

import contextlib

import io
import os
import socket
import time

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGLSLossless, RLELossless

from models.schema import Instance, Quarantine
from tests.dicom_factory import ct_dataset, to_bytes

BOMB_SIDE = 16384


def bomb_dataset(ts=JPEGLSLossless, **kw) -> pydicom.Dataset:
    """A CT whose compressed Pixel Data is 16x16 but whose header declares 16384x16384
    (16-bit: 512 MiB decoded), as the penetration test's 3 KB JPEG-LS file."""
    ds = ct_dataset(size=16, **kw)
    ds.PixelRepresentation = 0
    ds.compress(ts, np.zeros((16, 16), np.uint16),
                encoding_plugin="pyjpegls" if ts == JPEGLSLossless else "",
                generate_instance_uid=False)
    ds.Rows = ds.Columns = BOMB_SIDE
    return ds


def bomb_bytes(ts=JPEGLSLossless, **kw) -> bytes:
    return to_bytes(bomb_dataset(ts, **kw))


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if anything in this process decodes pixel data."""
    import pydicom.pixels

    import render.decode as rd

    def boom(*a, **k):
        raise AssertionError("pixel data was decoded")
    monkeypatch.setattr(rd, "_decode", boom)
    monkeypatch.setattr(pydicom.pixels, "pixel_array", boom)
    monkeypatch.setattr(pydicom.Dataset, "decompress", boom)


def _no_instance_stored():
    return Instance.select().count() == 0


# --------------------------------------------------------------------------- the header check

def test_corpus_and_demo_sizes_pass_the_default_limits():
    """The default max_decoded_mb / max_frame_mb pass every file of pydicom-data, the demo
    CT and a long multi-frame XA/US run; the bombs (one huge frame, or frames beyond the
    instance limit) do not."""
    from render.decode import (DEFAULT_MAX_DECODED_BYTES, DEFAULT_MAX_FRAME_BYTES,
                               ImageTooLarge, check_decoded_size, decoded_size, limits)
    from server.config import SETTINGS
    from tests.conftest import corpus_files
    default = {s.name: s.default for s in SETTINGS}
    assert default["max_decoded_mb"] << 20 == DEFAULT_MAX_DECODED_BYTES == \
        limits["max_decoded_bytes"]
    assert default["max_frame_mb"] << 20 == DEFAULT_MAX_FRAME_BYTES == limits["max_frame_bytes"]
    for f in corpus_files():
        ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        check_decoded_size(ds)
    demo = ct_dataset(size=512)
    assert decoded_size(demo) == 512 * 512 * 2
    check_decoded_size(demo)
    xa = ct_dataset(size=16)
    xa.Rows = xa.Columns = 1024
    xa.BitsAllocated, xa.NumberOfFrames = 8, 300      # a 10 s cardiac XA run: 300 MiB
    check_decoded_size(xa)
    xa.NumberOfFrames = 2000
    with pytest.raises(ImageTooLarge, match="max_decoded_mb"):
        check_decoded_size(xa)
    assert decoded_size(bomb_dataset()) == BOMB_SIDE * BOMB_SIDE * 2
    eight_bit = bomb_dataset()
    eight_bit.BitsAllocated = eight_bit.BitsStored = 8     # the pentest's 256 MiB bomb
    with pytest.raises(ImageTooLarge, match="max_frame_mb"):
        check_decoded_size(eight_bit)


@pytest.mark.parametrize("ts", [JPEGLSLossless, RLELossless], ids=["jpegls", "rle"])
def test_bomb_refused_at_import_without_decoding(ctx, tmp_path, ts, no_decoding):
    from adapters.importer import Importer
    f = tmp_path / "bomb.dcm"
    f.write_bytes(bomb_bytes(ts))
    assert f.stat().st_size < 4096
    summary = Importer(ctx.catalog).run([f])
    assert summary.imported == 0 and len(summary.rejected) == 1
    assert "max_frame_mb" in summary.rejected[0][1]
    q = Quarantine.select().get()
    assert "max_frame_mb" in q.reason
    assert _no_instance_stored()


def test_small_header_in_front_of_a_big_codestream_is_refused(ctx, tmp_path, no_decoding):
    """The DICOM header says 16x16, the JPEG-LS frame itself 4096x4096: a decoder would
    size its output from the codestream, so the file is refused before decoding."""
    from jpeg_ls import encode_array
    from pydicom.encaps import encapsulate

    from adapters.importer import Importer
    ds = ct_dataset(size=16)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([bytes(encode_array(np.zeros((4096, 4096), np.uint8)))])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    f = tmp_path / "liar.dcm"
    f.write_bytes(to_bytes(ds))
    summary = Importer(ctx.catalog).run([f])
    assert summary.imported == 0
    assert "4096x4096" in summary.rejected[0][1]
    assert _no_instance_stored()


def test_bomb_refused_by_cstore_with_a700(ctx, no_decoding):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    from adapters.dicom_net import MAX_PDU_BYTES, DicomScp
    scp = DicomScp(ctx.catalog, ae_title="CLOUDFILM", host="127.0.0.1", port=0,
                   fast_copies=False).start()
    try:
        assert scp.ae.maximum_pdu_size == MAX_PDU_BYTES > 0
        ae = AE(ae_title="MODALITY1")
        ae.add_requested_context(CTImageStorage, [JPEGLSLossless])
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="CLOUDFILM")
        assert assoc.is_established
        # the SCP tells us its bounded maximum PDU size
        assert assoc.acceptor.maximum_length == MAX_PDU_BYTES
        status = assoc.send_c_store(bomb_dataset())
        assoc.release()
    finally:
        scp.stop()
    assert status.Status == 0xA700
    assert "would decode to 512 MiB" in str(status.get("ErrorComment", ""))
    assert Quarantine.select().count() == 1
    assert _no_instance_stored()


def test_bomb_refused_by_stow_as_failed_sop(live, no_decoding):
    data = bomb_bytes()
    status, _, body = live.request(
        "POST", "/dicomweb/studies",
        body=b"--b1\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--b1--\r\n",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b1',
                 "Accept": "application/dicom+json"})
    assert 400 <= status < 500, (status, body[:300])
    assert b"00081198" in body and b"max_frame_mb" in body
    assert _no_instance_stored()
    assert Quarantine.select().count() == 1


def _store_bomb_bypassing_import(ctx) -> tuple[pydicom.Dataset, str]:
    """A bomb already in the catalog (stored before the limit existed, or with a higher
    max_decoded_mb): what render and the fast-copy path see."""
    from adapters.dicom_meta import extract_meta
    from render.decode import limits
    data = bomb_bytes(study_uid="1.2.77.1", series_uid="1.2.77.1.1", sop_uid="1.2.77.1.1.1")
    saved = dict(limits)
    limits.update(max_decoded_bytes=1 << 40, max_frame_bytes=1 << 40)
    try:
        meta, ds = extract_meta(data)
    finally:
        limits.update(saved)
    r = ctx.catalog.store_instance(meta, data, source="import", origin="bomb.dcm")
    assert r.outcome == "stored"
    rel = ctx.storage.instance_relpath(meta["study_uid"], meta["series_uid"], meta["sop_uid"])
    return ds, rel


def test_fast_copy_refuses_bomb_without_decoding(ctx, no_decoding):
    from adapters.fast_copy import make_fast_copy
    _, rel = _store_bomb_bypassing_import(ctx)
    dst = ctx.storage.fast_copy_of(rel)
    assert make_fast_copy(ctx.storage, rel, dst) is False
    assert not ctx.storage.exists(dst)


def test_render_of_stored_bomb_is_422_not_500(live, ctx):
    _store_bomb_bypassing_import(ctx)
    path = "/dicomweb/studies/1.2.77.1/series/1.2.77.1.1/instances/1.2.77.1.1.1/frames/1/rendered"
    status, _, body = live.get(path)
    assert status == 422, body[:300]
    assert b"max_frame_mb" in body
    # the in-process path (a native original) is refused the same way before decoding
    from render.decode import ImageTooLarge, load_image
    buf = io.BytesIO()
    raw = ct_dataset(size=16)
    raw.Rows = raw.Columns = BOMB_SIDE
    raw.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    with pytest.raises(ImageTooLarge):
        load_image(buf)


# --------------------------------------------------------------------------- decode workers

def _allocate(n_bytes: int) -> int:
    return int(np.ones(n_bytes, np.uint8).sum())


def _die() -> None:
    os._exit(3)


def test_decode_worker_address_space_limit_gives_memory_error_then_works():
    from adapters.fast_copy import decode_pool, worker_memory_limit
    limit = 16 << 20
    with decode_pool(1, limit) as pool:
        with pytest.raises(MemoryError):
            pool.submit(_allocate, worker_memory_limit(limit) + (256 << 20)).result()
        assert pool.submit(_allocate, 1 << 20).result() == 1 << 20      # same pool goes on


def test_render_service_replaces_a_dead_decode_worker(ctx, monkeypatch):
    import server.render_service as rs
    from server.render_service import DecodeRefused
    renders = ctx.renders
    monkeypatch.setattr(rs, "decode_keeping_copy", _die_with_args)
    ref = rs.InstanceRef("1", "1", "1", 1, 1, "a.dcm", "a.fast.dcm", "", 1, 1, 1,
                         str(JPEGLSLossless), True)
    first = renders._decode_pool()
    with pytest.raises(DecodeRefused) as exc:
        renders._decode_in_worker(ref)
    assert exc.value.status == 422
    second = renders._decode_pool()
    assert second is not first
    assert second.submit(_allocate, 1024).result() == 1024


def _die_with_args(*args):
    _die()


def test_wado_and_cget_transcoding_decode_only_in_the_limited_worker(no_decoding):
    """WADO-RS (and C-GET/C-MOVE, which use the same explicit_le) decode compressed data in
    the shared limited worker: with decoding forbidden in this process they still work."""
    from adapters import dicomweb as dw
    from adapters.fast_copy import run_limited
    from tests.conftest import corpus_dir
    data = (corpus_dir() / "emri_small_jpeg_ls_lossless.dcm").read_bytes()
    out = pydicom.dcmread(io.BytesIO(dw.explicit_le(data)))
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert len(out.PixelData) == out.Rows * out.Columns * out.NumberOfFrames * 2
    pixels, ts = dw.frames(data, [1], keep_compressed=False)
    assert ts == "1.2.840.10008.1.2.1" and len(pixels[0]) == 64 * 64 * 2
    with pytest.raises(MemoryError):        # a worker that dies: a clean error ...
        run_limited(_die_with_args)
    assert run_limited(_allocate, 4096) == 4096      # ... and a fresh worker


# --------------------------------------------------------------------------- render caps

def _image_size(body: bytes) -> tuple[int, int]:
    from PIL import Image
    return Image.open(io.BytesIO(body)).size


@pytest.fixture
def small_ct(ctx, tmp_path):
    from adapters.importer import Importer
    for k in range(6):
        ds = ct_dataset(study_uid="1.2.78.1", series_uid="1.2.78.1.1",
                        sop_uid=f"1.2.78.1.1.{k}", z=float(k), size=16, patient_id="PA001")
        ds.InstanceNumber = k + 1
        (tmp_path / f"s{k}.dcm").write_bytes(to_bytes(ds))
    assert Importer(ctx.catalog).run([tmp_path]).imported == 6
    return "1.2.78.1", "1.2.78.1.1"


def test_mip_and_mpr_sizes_are_capped_for_visitors_not_for_staff(live, small_ct):
    from tests.security.test_attacks import share_session
    study, series = small_ct
    cookie, _ = share_session(study)
    base = f"/api/render/studies/{study}/series/{series}"
    visitor = {"Cookie": f"cf_session={cookie}"}
    st, _, body = live.get(f"{base}/mip?size=2048", headers=visitor, auth=False)
    assert st == 200, body[:200]
    assert max(_image_size(body)) == live.ctx.config.render_max_px_visitor == 1024
    st, _, body = live.get(f"{base}/mpr/axial?viewport=2000,1000", headers=visitor,
                           auth=False)
    assert st == 200, body[:200]
    assert max(_image_size(body)) <= 1024
    st, _, body = live.get(f"{base}/mip?size=1500")         # staff (doctor's token)
    assert st == 200 and max(_image_size(body)) == 1500


# --------------------------------------------------------------------------- fair scheduling

def test_fair_scheduler_serves_light_and_other_principals_first():
    from server.render_service import FairScheduler
    s = FairScheduler(slots=4, heavy_per_principal=1)
    for i in range(6):
        s.push("attacker", f"mip{i}", heavy=True)
    s.push("victim", "frame0")
    s.push("victim", "frame1")
    s.push("staff", "mpr0", heavy=True)
    got = [s.pop() for _ in range(5)]
    # light frames first, then one heavy per principal; the attacker's other five wait
    assert got[0] == ("victim", "frame0", False)
    assert got[1] == ("victim", "frame1", False)
    assert {g[1] for g in got[2:4]} == {"mip0", "mpr0"}
    assert got[4] is None                       # every slot is taken (4)
    s.done("victim", False)
    s.push("victim", "frame2")
    assert s.pop() == ("victim", "frame2", False)
    s.done("victim", False)
    assert s.pop() is None                      # attacker: already one heavy running
    s.done("attacker", True)
    assert s.pop() == ("attacker", "mip1", True)
    assert s.waiting() == 4


def test_heavy_renders_never_take_the_last_slot():
    from server.render_service import FairScheduler
    s = FairScheduler(slots=2, heavy_per_principal=4)
    for i in range(3):
        s.push(f"p{i}", f"mip{i}", heavy=True)
    assert s.pop()[1] == "mip0"
    assert s.pop() is None                      # one slot stays free for frames
    s.push("viewer", "frame")
    assert s.pop() == ("viewer", "frame", False)


def test_priority_lanes_across_principals():
    """Issue 17: the frame a person waits for (0) before frames near it (1, also no hint),
    before heavy renders, before previews (2); principals take turns within a lane."""
    from server.render_service import FairScheduler
    s = FairScheduler(slots=8, heavy_per_principal=1)
    for i in range(3):
        s.push("phoneA", f"A-preview{i}", priority=2)
    s.push("phoneA", "A-near", priority=1)
    s.push("doctor", "mip", heavy=True)
    s.push("phoneB", "B-preview", priority=2)
    s.push("phoneB", "B-first", priority=0)
    s.push("phoneC", "C-first", priority=0)
    s.push("phoneC", "C-plain")                       # no hint: near
    assert s.backlog_s() == pytest.approx((8 + 10) * s.light_s / 8)
    order = [s.pop()[1] for _ in range(8)]
    assert order[:2] == ["B-first", "C-first"]
    assert set(order[2:4]) == {"A-near", "C-plain"}
    assert order[4] == "mip"
    assert sorted(order[5:]) == ["A-preview0", "A-preview1", "B-preview"]
    assert order[5:7] != ["A-preview0", "A-preview1"]    # B's preview is not last behind A's
    assert s.waiting() == 1
    s.done("phoneA", False, seconds=1.0)
    assert s.light_s == pytest.approx(0.9 * 0.02 + 0.1)


# --------------------------------------------------------------------------- HL7 connections

@contextlib.contextmanager
def _mllp_listener(*, limit: int, idle_s: float, max_connections: int,
                   budget: int | None = None):
    """A real MLLP listener on a free port in its own event-loop thread, answering AA;
    yields (listener, notes recorded by it)."""
    import asyncio
    import threading

    from adapters.hl7_mllp import MllpListener

    async def handle(message, error, code, *rest):
        return b"MSH|^~\\&|||||||ACK||P|2.5\rMSA|AA|1"

    notes = []

    async def record(peer, outcome, detail):
        notes.append((peer, outcome, detail))

    loop = asyncio.new_event_loop()
    listener = MllpListener(handle, "127.0.0.1", 0, record=record, limit=limit, idle_s=idle_s)
    listener.max_connections = max_connections
    if budget is not None:
        listener.budget.limit = budget
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(listener.start(), loop).result(10)
    try:
        yield listener, notes
    finally:
        asyncio.run_coroutine_threadsafe(listener.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)


def test_hl7_unfinished_messages_share_one_budget():
    """Ten senders each sending 3 MiB without an end byte (message limit 4 MiB): together they
    never hold more than the listener's budget (5 MiB); those that would pass it are closed,
    and a complete message afterwards is still answered AA."""
    socks = []
    with _mllp_listener(limit=4 << 20, idle_s=5.0, max_connections=20,
                        budget=5 << 20) as (listener, notes):
        head = b"\x0bMSH|^~\\&|HIS|H|CF|H|20260101||ADT^A01|1|P|2.5\r"
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", listener.port), timeout=10)
            socks.append(s)
            try:
                s.sendall(head + b"X" * (3 << 20))      # no <FS>: never ends
            except OSError:
                pass                                    # closed by the budget already
        def closed():
            return [n for n in notes if "hl7_buffer_budget_mb" in n[2]]
        # the kernel may hold the 3 MiB of each sender before the listener has accepted any
        # of them: wait for the listener to have read and refused them, not only for its count
        deadline = time.monotonic() + 30
        while ((len(closed()) < 8 or listener.connections > 1)
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert listener.budget.peak <= (5 << 20) + (64 << 10)   # one read past it at most
        closed = closed()
        assert len(closed) >= 8, notes
        assert all(n[0].startswith("127.0.0.1:") for n in closed)
        for s in socks:
            s.close()
        socks.clear()
        deadline = time.monotonic() + 10
        while listener.connections and time.monotonic() < deadline:
            time.sleep(0.05)
        s = socket.create_connection(("127.0.0.1", listener.port), timeout=10)
        socks.append(s)
        s.sendall(head + b"PID|1||X" + b"Y" * (1 << 20) + b"\x1c\r")
        answer = b""
        while b"\x1c" not in answer:
            part = s.recv(1 << 16)
            assert part, "connection closed without an answer"
            answer += part
        assert b"MSA|AA" in answer
        for s in socks:
            s.close()


def test_hl7_connection_cap_and_idle_timeout_with_real_sockets():
    """Ten connections each sending 2 MiB without an end byte: beyond the cap they are
    closed at once; the open ones hold at most the frame limit and are closed when idle."""
    socks = []
    with _mllp_listener(limit=1 << 20, idle_s=1.0, max_connections=3) as (listener, notes):
        chunk = b"\x0bMSH|^~\\&|HIS|H|CF|H|20260101||ADT^A01|1|P|2.5\r" + b"X" * (2 << 20)
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", listener.port), timeout=10)
            socks.append(s)
            deadline = time.monotonic() + 5
            while listener.connections + listener.refused < len(socks) \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
        for s in socks:
            try:
                s.sendall(chunk)            # no <FS>: a message that never ends
            except OSError:
                pass                        # a refused connection may already be reset
        assert listener.connections == 3
        assert listener.refused == 7
        refused = [n for n in notes if "hl7_max_connections" in n[2]]
        assert len(refused) == 7 and all(n[0].startswith("127.0.0.1:") for n in refused)
        # the open three are closed after hl7_idle_timeout_s of silence
        for s in socks:
            s.settimeout(10)
            try:
                while s.recv(1 << 16):
                    pass
            except (ConnectionResetError, OSError):
                pass
        assert listener.connections == 0
        assert any("idle" in n[2] for n in notes)
        for s in socks:
            s.close()


def test_warm_up_starts_the_decode_workers_before_the_first_compressed_frame(ctx):
    """serve's warm-up starts every decode worker, so a never-seen compressed series scrolled
    right after a start neither waits for processes to start nor pays their start-up CPU
    while it is scrolled: decoding its frames starts no further process."""
    import multiprocessing

    from pydicom.uid import JPEG2000Lossless

    from adapters.importer import Importer
    renders = ctx.renders
    workers = ctx.config.decode_processes or os.cpu_count()
    before = set(multiprocessing.active_children())
    renders.warm_up()
    started = set(multiprocessing.active_children()) - before
    assert len(started) == workers

    folder = ctx.storage.root.parent / "incoming"
    folder.mkdir()
    for i in range(2 * workers):
        ds = ct_dataset(study_uid="1.2.91.1", series_uid="1.2.91.2", sop_uid=f"1.2.91.3.{i}",
                        size=64, z=float(i))
        ds.PixelData = np.full((64, 64), 1000 + i, np.int16).tobytes()
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
        (folder / f"{i}.dcm").write_bytes(to_bytes(ds))
    assert Importer(ctx.catalog, fast_copies=False).run([folder]).imported == 2 * workers
    for ref in renders.lookup_series("1.2.91.1", "1.2.91.2"):
        img = renders.image(ref)
        assert int(img.pixels[0, 0, 0]) == 1000 + int(ref.sop_uid.rsplit(".", 1)[1])
    assert set(multiprocessing.active_children()) - before == started
