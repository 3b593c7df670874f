"""HL7 over MLLP: the listener (in the server's event loop; database work runs in a thread
pool) and the sender used by the outbox.

Framing follows the MLLP standard (HL7 v2 Appendix C: <VT> message <FS><CR>) and the variants
real senders use: <FS><CR><LF>, <FS> with no trailing <CR>, blank lines between frames,
several messages in one frame (each applied and acknowledged in order), and BHS/FHS batches
(one batch acknowledgement). A frame larger than the size limit (setting
hl7_max_message_mb) is read to its end, answered AR and the connection stays usable; a
connection idle for hl7_idle_timeout_s is closed. A bad frame, a truncated message or a peer
that disconnects mid-message is logged and recorded with its reason; the listener keeps
serving.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from dataclasses import dataclass
from typing import Awaitable, Callable

from models.integration import note_event

from .hl7_codec import ack_code

log = logging.getLogger(__name__)

VT, FS = 0x0B, 0x1C
BETWEEN_FRAMES = b"\r\n \t"
BUFFER_BUDGET_BYTES = 96 << 20      # default of hl7_buffer_budget_mb
MAX_MESSAGE_BYTES = 32 << 20        # default of hl7_max_message_mb: a report PDF fits easily
IDLE_TIMEOUT_S = 300
HEAD_KEPT = 16 << 10                # of a refused frame, enough to echo MSH-10
EMPTY_MSH = b"MSH|^~\\&|||||||ACK||P|2.5"

# (message bytes, frame error, refusal code AE/AR[, sender address]) -> ACK bytes
Handler = Callable[..., Awaitable[bytes]]


class Refused(bytes):
    """An ACK after which the connection is closed (a sender the peer table refuses)."""


class Incomplete(Exception):
    """The peer closed the connection inside a frame."""

    def __init__(self, received: int):
        super().__init__(received)
        self.received = received


@dataclass
class Frame:
    data: bytes
    error: str = ""       # why the frame cannot be read as messages ("" when it can)
    code: str = "AE"      # the refusal an error gets: AE, or AR (too large: do not resend)


class OverBudget(Exception):
    """The listener's connections together hold more unfinished bytes than its budget."""


class Budget:
    """Bytes of unfinished messages held by all connections of one listener
    (hl7_buffer_budget_mb): the connection whose read would go past it is closed, so ten
    senders that never send an end byte cannot hold ten times the message limit."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held: dict[int, int] = {}
        self.peak = 0

    def track(self, owner: object, size: int) -> None:
        self.held[id(owner)] = size
        total = sum(self.held.values())
        self.peak = max(self.peak, total)
        if self.limit and total > self.limit:
            self.release(owner)
            raise OverBudget(total)

    def release(self, owner: object) -> None:
        self.held.pop(id(owner), None)


class FrameReader:
    """MLLP frames from a stream, whatever of the common variants the sender uses."""

    def __init__(self, reader: asyncio.StreamReader, *, limit: int = MAX_MESSAGE_BYTES,
                 idle_s: float | None = IDLE_TIMEOUT_S, budget: Budget | None = None):
        self.reader = reader
        self.limit = limit
        self.idle_s = idle_s
        self.budget = budget
        self.buf = bytearray()

    async def _fill(self) -> bool:
        chunk = await asyncio.wait_for(self.reader.read(1 << 16), self.idle_s)
        self.buf += chunk
        if self.budget is not None:
            self.budget.track(self, len(self.buf))
        return bool(chunk)

    async def next(self) -> Frame | None:
        """The next frame; None at a clean end of stream. Raises Incomplete when the stream
        ends inside a frame, asyncio.TimeoutError when the peer stays silent too long."""
        while True:
            i = 0
            while i < len(self.buf) and self.buf[i] in BETWEEN_FRAMES:
                i += 1
            del self.buf[:i]
            if self.buf:
                break
            if not await self._fill():
                return None
        if self.buf[0] != VT:
            return await self._garbage()
        head, size = await self._until_fs(1)
        if size > self.limit:
            return Frame(head, f"message larger than the limit of {self.limit >> 20} MiB "
                               f"({size} bytes)", "AR")
        return Frame(head)

    async def _until_fs(self, start: int) -> tuple[bytes, int]:
        """Bytes from `start` to the next <FS> (consumed with it) and their size; past the
        limit only the first HEAD_KEPT bytes are kept."""
        dropped, pos = 0, start
        while True:
            k = self.buf.find(FS, pos)
            if k >= 0:
                data = bytes(self.buf[start:k])
                del self.buf[:k + 1]
                return data, dropped + len(data)
            pos = len(self.buf)
            if pos - start > self.limit:       # keep the head, count the rest
                cut = start + HEAD_KEPT
                dropped += pos - cut
                del self.buf[cut:]
                pos = cut
            if not await self._fill():
                raise Incomplete(dropped + len(self.buf) - start)

    async def _garbage(self) -> Frame:
        """Bytes that do not begin with <VT>: up to the next <FS> (a frame whose <VT> is
        missing) or the next <VT>, answered AE."""
        why = "MLLP frame does not begin with <VT> (0x0B)"
        while True:
            vt, fs = self.buf.find(VT), self.buf.find(FS)
            if fs >= 0 and (vt < 0 or fs < vt):
                data = bytes(self.buf[:fs])
                del self.buf[:fs + 1]
                return Frame(data[:HEAD_KEPT], why)
            if vt >= 0:
                data = bytes(self.buf[:vt])
                del self.buf[:vt]
                return Frame(data[:HEAD_KEPT], why)
            if not await self._fill():
                data = bytes(self.buf)
                self.buf.clear()
                return Frame(data[:HEAD_KEPT], why)


SEGMENT_START = re.compile(rb"(?:^|(?<=[\r\n]))(MSH|BHS|BTS|FHS|FTS)(?=.)", re.S)


@dataclass
class Batch:
    messages: list[bytes]
    fhs: bytes | None = None         # file header segment, if the frame is an FHS file
    bhs: bytes | None = None         # batch header segment, if the frame is a batch


def split_frame(data: bytes) -> Batch:
    """The messages of one frame in order (one, several, or a BHS/FHS batch)."""
    marks = [(m.start(), m.group(1)) for m in SEGMENT_START.finditer(data)]
    out = Batch([])
    if not marks:
        return Batch([data])
    if marks[0][0] > 0 and data[:marks[0][0]].strip(BETWEEN_FRAMES):
        out.messages.append(data[:marks[0][0]])          # text before any MSH: unreadable
    for n, (pos, kind) in enumerate(marks):
        end = marks[n + 1][0] if n + 1 < len(marks) else len(data)
        chunk = data[pos:end]
        if kind == b"MSH":
            out.messages.append(chunk)
        elif kind == b"FHS":
            out.fhs = chunk.split(b"\r")[0].split(b"\n")[0]
        elif kind == b"BHS":
            out.bhs = chunk.split(b"\r")[0].split(b"\n")[0]
    return out


def batch_ack(batch: Batch, acks: list[bytes], app: str = "CLOUDFILM") -> bytes:
    """The acknowledgement of a batch: BHS (and FHS) naming the batch answered, each
    message's ACK in order, BTS with the count (and FTS)."""
    now = dt.datetime.now().strftime("%Y%m%d%H%M%S").encode()

    def header(seg: bytes, name: bytes) -> bytes:
        sep = seg[3:4] or b"|"
        f = seg.split(sep)
        enc = f[1] if len(f) > 1 else b"^~\\&"
        theirs = lambda i: f[i] if len(f) > i else b""            # noqa: E731
        return sep.join([name, enc, app.encode(), b"", theirs(2), theirs(3), now, b"", b"",
                         b"", b"ACK" + now, theirs(10)])
    segs = []
    if batch.fhs is not None:
        segs.append(header(batch.fhs, b"FHS"))
    segs.append(header(batch.bhs or b"BHS|^~\\&", b"BHS"))
    segs += [a.rstrip(b"\r\n") for a in acks]
    segs.append(b"BTS|" + str(len(acks)).encode())
    if batch.fhs is not None:
        segs.append(b"FTS|1")
    return b"\r".join(segs) + b"\r"


def write_frame(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"\x0b" + data + b"\x1c\r")


class MllpListener:
    max_connections = 0     # hl7_max_connections (set by server/integration.py); 0: no cap
    refused = 0             # connections closed at once because of the cap

    def __init__(self, handle: Handler, host: str, port: int, *,
                 record: Callable[[str, str, str], Awaitable[None]] | None = None,
                 limit: int = MAX_MESSAGE_BYTES, idle_s: float | None = IDLE_TIMEOUT_S,
                 with_peer: bool = False, ssl_context=None):
        self.handle = handle
        self.host, self.port = host, port
        self.record = record
        self.limit, self.idle_s = limit, idle_s
        self.with_peer = with_peer      # handle(...) also gets the sender's address
        self.ssl_context = ssl_context  # MLLP over TLS (hl7_tls_cert_file / _key_file)
        self.server: asyncio.AbstractServer | None = None
        self.connections = 0
        self.messages = 0
        self.budget = Budget(BUFFER_BUDGET_BYTES)   # hl7_buffer_budget_mb
        self.draining = False
        self._waiting: dict = {}        # writer -> FrameReader of connections between frames

    async def start(self) -> "MllpListener":
        self.server = await asyncio.start_server(self._client, host=self.host, port=self.port,
                                                 ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("HL7 MLLP listener on %s:%d", self.host, self.port)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def drain(self, grace_s: float) -> int:
        """SIGTERM: accept no more connections, close the ones waiting between messages, let
        a message being received or applied finish and be answered (its connection closes
        after the ACK), for at most grace_s; then close what is left (a sender resends what
        was not ACKed). Returns how many connections had to be cut."""
        self.draining = True
        await self.stop()
        for writer, frames in list(self._waiting.items()):
            if not frames.buf:
                writer.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        cut = self.connections
        for writer in list(self._waiting):
            writer.close()
        return cut

    async def _note(self, peer: str, outcome: str, detail: str) -> None:
        log.info("MLLP %s: %s", peer, detail)
        if self.record is not None:
            try:
                await self.record(peer, outcome, detail)
            except Exception:  # noqa: BLE001
                log.exception("could not record an MLLP event")

    async def _client(self, reader, writer) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "?"
        if self.max_connections and self.connections >= self.max_connections:
            # issue 14: unfinished messages hold up to `limit` bytes each, so connections are
            # capped (memory about max_connections x limit, measured 1.3x with the buffer
            # growth); logged with the address only
            self.refused += 1
            await self._note(peer, "error", f"connection refused: {self.connections} MLLP "
                             f"connections open (hl7_max_connections = "
                             f"{self.max_connections})")
            writer.close()
            return
        frames = FrameReader(reader, limit=self.limit, idle_s=self.idle_s, budget=self.budget)
        self.connections += 1
        try:
            while await self._one_frame(frames, writer, peer):
                pass
        finally:
            self.budget.release(frames)
            self.connections -= 1
            writer.close()
            try:
                await writer.wait_closed()
            except Exception:  # noqa: BLE001
                pass

    async def _one_frame(self, frames: FrameReader, writer, peer: str) -> bool:
        """Read, apply and answer one frame; False when the connection is done."""
        if self.draining and not frames.buf:
            return False
        self._waiting[writer] = frames
        try:
            frame = await frames.next()
        except Incomplete as exc:
            await self._note(peer, "error", f"peer closed the connection in the middle of a "
                             f"message ({exc.received} bytes received, no end of block): "
                             "discarded")
            return False
        except asyncio.TimeoutError:
            await self._note(peer, "info", f"connection idle for {self.idle_s:.0f} s: closed")
            return False
        except OverBudget as exc:
            await self._note(peer, "error", f"connection closed: unfinished messages of all "
                             f"connections would hold {exc.args[0]} bytes (hl7_buffer_budget_mb "
                             f"= {self.budget.limit >> 20})")
            return False
        except (ConnectionError, OSError) as exc:
            await self._note(peer, "error", f"connection error: {exc}")
            return False
        finally:
            self._waiting.pop(writer, None)
        if frame is None:
            return False
        host = peer.rsplit(":", 1)[0]
        if frame.error:
            await self._note(peer, "error", f"{frame.error}: answered {frame.code}")
            replies = [await self._answer(frame.data or EMPTY_MSH, frame.error, frame.code,
                                          host)]
        else:
            batch = split_frame(frame.data)
            acks = []
            for m in batch.messages:
                acks.append(await self._answer(m, "", "AE", host))
                if isinstance(acks[-1], Refused):
                    break               # an unknown sender: nothing more is applied
            replies = [batch_ack(batch, acks)] if batch.bhs or batch.fhs else acks
            if any(isinstance(a, Refused) for a in acks):
                replies = [Refused(r) for r in replies]
        if any(r is None for r in replies):
            return False
        for r in replies:
            write_frame(writer, r)
        try:
            await writer.drain()
        except (ConnectionError, OSError):
            await self._note(peer, "error", "peer went away before reading the ACK")
            return False
        if any(isinstance(r, Refused) for r in replies):
            await self._note(peer, "error", "sender refused by the peer table: closed")
            return False
        return not self.draining        # a stopping server closes after the ACK

    async def _answer(self, message: bytes, error: str, code: str,
                      host: str = "") -> bytes | None:
        try:
            if self.with_peer:
                ack = await self.handle(message, error, code, host)
            else:
                ack = await self.handle(message, error, code)
        except Exception:  # noqa: BLE001 - never stop the listener
            log.exception("HL7 handler failed")
            return None
        self.messages += 1
        return ack


class DeliveryError(Exception):
    pass


async def send_message(host: str, port: int, data: bytes, *, timeout: float = 10.0) -> str:
    """Send one message; return the ACK text. Raises DeliveryError unless the receiver
    answered AA or CA (in whichever framing variant it answers)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        raise DeliveryError(f"cannot connect to {host}:{port}: {exc or 'timeout'}") from None
    try:
        write_frame(writer, data)
        await writer.drain()
        frame = await FrameReader(reader, idle_s=timeout).next()
    except asyncio.TimeoutError:
        raise DeliveryError(f"no ACK from {host}:{port} within {timeout:.0f} s") from None
    except (OSError, Incomplete) as exc:
        raise DeliveryError(f"{host}:{port}: {type(exc).__name__}: {exc}") from None
    finally:
        writer.close()
    if frame is None or frame.error:
        raise DeliveryError(f"{host}:{port}: no readable ACK "
                            f"({frame.error if frame else 'connection closed'})")
    text = frame.data.decode("utf-8", errors="replace")
    code, _, why = ack_code(text)
    if code not in ("AA", "CA"):
        raise DeliveryError(f"{host}:{port} answered {code or 'no MSA'}: {why[:200]}")
    return text


def event_recorder(executor, channel: str = "hl7"):
    async def record(peer: str, outcome: str, detail: str) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, note_event, channel, peer, outcome, detail)
    return record
