"""HL7 over MLLP with the hl7 package's asyncio streams: the listener (in the server's
event loop; database work runs in a thread pool) and the sender used by the outbox.

A bad frame, a truncated message or a peer that disconnects mid-message is logged and
recorded with its reason; the listener keeps serving.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from hl7.mllp import InvalidBlockError, open_hl7_connection, start_hl7_server

from models.integration import note_event

from .hl7_codec import ack_code

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 32 << 20        # a report PDF in base64 fits easily

Handler = Callable[[bytes, str], Awaitable[bytes]]   # (message bytes, frame error) -> ACK


class MllpListener:
    def __init__(self, handle: Handler, host: str, port: int, *,
                 record: Callable[[str, str, str], Awaitable[None]] | None = None):
        self.handle = handle
        self.host, self.port = host, port
        self.record = record
        self.server: asyncio.AbstractServer | None = None
        self.connections = 0
        self.messages = 0

    async def start(self) -> "MllpListener":
        self.server = await start_hl7_server(self._client, host=self.host, port=self.port,
                                             limit=MAX_MESSAGE_BYTES)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("HL7 MLLP listener on %s:%d", self.host, self.port)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

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
        self.connections += 1
        try:
            while True:
                frame_error = ""
                try:
                    block = await reader.readblock()
                except asyncio.IncompleteReadError as exc:
                    if exc.partial.strip(b"\x0b\x1c\r\n \t"):
                        await self._note(peer, "error", f"peer closed the connection in the "
                                         f"middle of a message ({len(exc.partial)} bytes "
                                         "received, no end of block): discarded")
                    break
                except InvalidBlockError:
                    await self._note(peer, "error", "MLLP frame does not begin with <VT> "
                                     "(0x0B): answered AE")
                    frame_error = "MLLP frame does not begin with <VT> (0x0B)"
                    block = b"MSH|^~\\&|||||||ACK||P|2.5"
                except ValueError:
                    await self._note(peer, "error", f"message larger than "
                                     f"{MAX_MESSAGE_BYTES >> 20} MiB: discarded")
                    block = b"MSH|^~\\&|||||||ACK||P|2.5"
                    frame_error = f"message larger than {MAX_MESSAGE_BYTES >> 20} MiB"
                except (ConnectionError, OSError) as exc:
                    await self._note(peer, "error", f"connection error: {exc}")
                    break
                try:
                    ack = await self.handle(block, frame_error)
                except Exception:  # noqa: BLE001 - never stop the listener
                    log.exception("HL7 handler failed")
                    ack = None
                if ack is None:
                    break
                self.messages += 1
                writer.writeblock(ack)
                try:
                    await writer.drain()
                except (ConnectionError, OSError):
                    await self._note(peer, "error", "peer went away before reading the ACK")
                    break
        finally:
            self.connections -= 1
            writer.close()
            try:
                await writer.wait_closed()
            except Exception:  # noqa: BLE001
                pass


class DeliveryError(Exception):
    pass


async def send_message(host: str, port: int, data: bytes, *, timeout: float = 10.0) -> str:
    """Send one message; return the ACK text. Raises DeliveryError unless the receiver
    answered AA or CA."""
    try:
        reader, writer = await asyncio.wait_for(
            open_hl7_connection(host, port, limit=MAX_MESSAGE_BYTES), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        raise DeliveryError(f"cannot connect to {host}:{port}: {exc or 'timeout'}") from None
    try:
        writer.writeblock(data)
        await writer.drain()
        block = await asyncio.wait_for(reader.readblock(), timeout)
    except asyncio.TimeoutError:
        raise DeliveryError(f"no ACK from {host}:{port} within {timeout:.0f} s") from None
    except (OSError, asyncio.IncompleteReadError, InvalidBlockError, ValueError) as exc:
        raise DeliveryError(f"{host}:{port}: {type(exc).__name__}: {exc}") from None
    finally:
        writer.close()
    text = block.decode("utf-8", errors="replace")
    code, _, why = ack_code(text)
    if code not in ("AA", "CA"):
        raise DeliveryError(f"{host}:{port} answered {code or 'no MSA'}: {why[:200]}")
    return text


def event_recorder(executor, channel: str = "hl7"):
    async def record(peer: str, outcome: str, detail: str) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, note_event, channel, peer, outcome, detail)
    return record
