"""MLLP framing as real senders do it (issue 15, item 2): <FS><CR><LF>, no trailing <CR>,
several messages in one frame, BHS/FHS batches, a message over the size limit (AR, the
connection stays usable), an idle connection closed; and the frame reader on its own."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest

from adapters.hl7_codec import ack_code
from adapters.hl7_mllp import FrameReader, Incomplete, split_frame
from models.schema import InboundMessage, Patient

from . import hl7_samples as S

pytestmark = pytest.mark.db
VT, FS, CR, LF = b"\x0b", b"\x1c", b"\r", b"\n"


@pytest.fixture
def small_hl7(ctx, loop_thread):
    """Our listener with a 1 MiB limit and a 2 s idle timeout."""
    from server import integration
    ctx.config.set_base(hl7_max_message_mb=1, hl7_idle_timeout_s=5)
    listener = loop_thread.run(integration.start_hl7(ctx, "127.0.0.1", 0))
    yield listener
    loop_thread.run(listener.stop())
    integration.SERVICES.hl7_executor.shutdown(wait=True)
    integration.SERVICES.__init__()


class Peer:
    """One MLLP connection that reads answers frame by frame."""

    def __init__(self, port: int):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.s.sendall(data)

    def frame(self) -> bytes:
        while FS not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        head, _, self.buf = self.buf.partition(FS)
        self.buf = self.buf.lstrip(CR + LF)
        assert head.startswith(VT), head[:40]
        return head[1:]

    def ack(self) -> tuple[str, str, str]:
        return ack_code(self.frame().decode("utf-8", errors="replace"))

    def close(self) -> None:
        self.s.close()


def _applied(*ctrls) -> bool:
    got = {m.control_id: m.outcome for m in InboundMessage.select()}
    return all(got.get(c) == "applied" for c in ctrls)


@pytest.mark.parametrize("ending", [FS + CR + LF, FS, FS + CR + CR + LF + b"  \n"],
                         ids=["fs-cr-lf", "fs-only", "fs-blank-lines"])
def test_every_message_on_a_connection_is_applied_whatever_ends_the_frame(hl7_server,
                                                                           ending):
    """Was: with <FS><CR><LF> the first message got AA and every later one AE, not applied;
    with a bare <FS> the listener waited forever."""
    p = Peer(hl7_server.port)
    for n in range(3):
        p.send(VT + S.adt(f"E{n}", pid=f"PE{n}").encode() + ending)
        assert p.ack()[:2] == ("AA", f"E{n}")
    p.close()
    assert _applied("E0", "E1", "E2")
    assert Patient.select().where(Patient.patient_id.in_(["PE0", "PE1", "PE2"])).count() == 3


def test_two_messages_in_one_frame_are_both_applied_and_acknowledged_in_order(hl7_server):
    """Was: the second message of a frame was silently dropped."""
    p = Peer(hl7_server.port)
    two = S.adt("M1", pid="PM1") + "\r" + S.adt("M2", pid="PM2") + "\r"
    p.send(VT + two.encode() + FS + CR)
    assert p.ack()[:2] == ("AA", "M1")
    assert p.ack()[:2] == ("AA", "M2")
    p.close()
    assert _applied("M1", "M2")


def test_a_batch_gets_one_batch_acknowledgement(hl7_server):
    """Was: BHS/FHS batches answered AE and nothing applied."""
    batch = "\r".join([
        "FHS|^~\\&|HIS|HOSP|CLOUDFILM|RAD|20261130101010||||F-77",
        "BHS|^~\\&|HIS|HOSP|CLOUDFILM|RAD|20261130101010||||B-12",
        S.adt("B1", pid="PB1"), S.adt("B2", pid="PB2"),
        S.msh("B3", "SIU^S12") + "\rSCH|1",
        "BTS|3", "FTS|1"]) + "\r"
    p = Peer(hl7_server.port)
    p.send(VT + batch.encode() + FS + CR)
    segs = [s for s in p.frame().decode().split("\r") if s]
    p.close()
    names = [s[:3] for s in segs]
    assert names[:2] == ["FHS", "BHS"] and names[-2:] == ["BTS", "FTS"]
    assert segs[0].split("|")[11] == "F-77" and segs[1].split("|")[11] == "B-12"
    msas = [s.split("|") for s in segs if s.startswith("MSA")]
    assert [(m[1], m[2]) for m in msas] == [("AA", "B1"), ("AA", "B2"), ("AR", "B3")]
    assert segs[-2] == "BTS|3"
    assert _applied("B1", "B2")


def test_a_message_over_the_limit_is_refused_ar_and_the_connection_goes_on(small_hl7):
    """Was: AE for the big message and AE for the next one on the same connection; the
    limit was documented nowhere (now setting hl7_max_message_mb)."""
    p = Peer(small_hl7.port)
    big = S.adt("BIG1", pid="PBIG") + "\rNTE|1||" + "x" * (3 << 20) + "\r"
    p.send(VT + big.encode() + FS + CR)
    code, ctrl, why = p.ack()
    assert (code, ctrl) == ("AR", "BIG1") and "1 MiB" in why
    p.send(VT + S.adt("AFTER1", pid="PAFTER").encode() + FS + CR)
    assert p.ack()[:2] == ("AA", "AFTER1")
    p.close()
    kept = {m.control_id: m.outcome for m in InboundMessage.select()}
    assert kept["BIG1"] == "rejected" and kept["AFTER1"] == "applied"
    assert not Patient.select().where(Patient.patient_id == "PBIG").exists()


def test_an_idle_connection_is_closed(small_hl7):
    p = Peer(small_hl7.port)
    p.send(VT + S.adt("I1", pid="PI1").encode() + FS + CR)
    assert p.ack()[0] == "AA"
    t0 = time.monotonic()
    with pytest.raises(EOFError):
        p.frame()                                      # nothing sent: the server hangs up
    assert 4 <= time.monotonic() - t0 < 20
    p.close()


def test_the_python_hl7_client_is_answered(hl7_server):
    """The hl7 package's own MLLP client (what many integration engines' Python glue uses)."""
    from hl7.mllp import open_hl7_connection

    async def run():
        reader, writer = await open_hl7_connection("127.0.0.1", hl7_server.port,
                                                   encoding="utf-8")
        out = []
        for n in range(2):
            writer.writemessage(S.adt(f"PY{n}", pid=f"PPY{n}"))
            await writer.drain()
            out.append(ack_code(str(await reader.readmessage()))[:2])
        writer.close()
        return out
    assert asyncio.run(run()) == [("AA", "PY0"), ("AA", "PY1")]


# the frame reader alone -------------------------------------------------------------------
def _frames(data: bytes, limit=1 << 20, chunk=7):
    async def run():
        reader = asyncio.StreamReader()
        for i in range(0, len(data), chunk):         # arrives in small pieces
            reader.feed_data(data[i:i + chunk])
        reader.feed_eof()
        frames = FrameReader(reader, limit=limit, idle_s=5)
        out = []
        try:
            while (f := await frames.next()) is not None:
                out.append(f)
        except Incomplete as exc:
            out.append(("incomplete", exc.received))
        return out
    return asyncio.run(run())


def test_frame_reader_variants():
    fs = _frames(b"\r\n" + VT + b"A" + FS + CR + LF + VT + b"B" + FS + VT + b"C" + FS + CR)
    assert [(f.data, f.error) for f in fs] == [(b"A", ""), (b"B", ""), (b"C", "")]
    fs = _frames(b"MSH|no start" + FS + CR + VT + b"D" + FS + CR)
    assert fs[0].error.startswith("MLLP frame does not begin") and fs[0].data == b"MSH|no start"
    assert fs[1].data == b"D" and not fs[1].error
    big = _frames(VT + b"MSH|" + b"y" * 5000 + FS + CR + VT + b"E" + FS, limit=1000, chunk=300)
    assert big[0].code == "AR" and "5004 bytes" in big[0].error and big[0].data.startswith(b"MSH|")
    assert big[1].data == b"E"
    assert _frames(VT + b"cut off") == [("incomplete", 7)]


def test_split_frame_keeps_message_bytes():
    one = b"MSH|^~\\&|A\rPID|1\r"
    assert split_frame(one).messages == [one]
    two = split_frame(b"MSH|^~\\&|A\rPID|1\nMSH|^~\\&|B\rPID|2\r")
    assert two.messages == [b"MSH|^~\\&|A\rPID|1\n", b"MSH|^~\\&|B\rPID|2\r"]
    b = split_frame(b"BHS|^~\\&|X\rMSH|^~\\&|A\rBTS|1\r")
    assert b.bhs == b"BHS|^~\\&|X" and b.messages == [b"MSH|^~\\&|A\r"]
    # "MSH" inside a field is not a message start
    assert len(split_frame(b"MSH|^~\\&|A\rNTE|1||see MSH|x\r").messages) == 1


def test_a_report_with_a_real_size_pdf_is_applied(hl7_server):
    """A report PDF of a few hundred KiB in base64 (a real one) is applied and kept; on
    MariaDB the message log's TEXT column stopped at 64 KiB (migration 0054: LONGTEXT)."""
    import os
    from models.schema import Exam, Report
    p = Peer(hl7_server.port)
    p.send(VT + S.orm("BIGPDF-O", "ACC-BIGPDF", pid="PBIG2").encode() + FS + CR)
    assert p.ack()[0] == "AA"
    pdf = b"%PDF-1.4\n%" + os.urandom(300 << 10).hex().encode()[:300 << 10] + b"\n%%EOF\n"
    p.send(VT + S.oru("BIGPDF-R", "ACC-BIGPDF", pdf=pdf, pid="PBIG2").encode() + FS + CR)
    code, ctrl, why = p.ack()
    p.close()
    assert (code, ctrl) == ("AA", "BIGPDF-R"), why
    report = Report.get(Report.exam == Exam.get(Exam.accession_number == "ACC-BIGPDF"))
    assert report.pdf_path
    assert len(InboundMessage.get(InboundMessage.control_id == "BIGPDF-R").raw) > 400_000
