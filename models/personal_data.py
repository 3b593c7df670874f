"""Personal data at rest: raw inbound messages are stored encrypted, shown redacted.

The HL7 listener and the import API keep every message they receive (inbound_message.raw) for
troubleshooting. Such a message carries the patient's full national ID number and phone, so
it is stored sealed with AES-256-GCM under a key derived from the server's secret key
(secret_key_file): a copy of the database alone does not reveal them. The row's channel and
control ID are the associated data, so a sealed message cannot be moved to another row.

- `seal` / `unseal`: the stored form "cf1:" + base64(nonce ‖ ciphertext ‖ tag); a value
  without the prefix is a message stored before migration m0058 (returned as it is);
- `redact`: the text with every ID number and phone masked like the patient table's masks
  (models/catalog.py mask_id_number, mask_phone) — what staff screens show;
- `inbound_message(id, reveal=...)`: one stored message, redacted, or decrypted for the system
  admin's `./run.sh inbound show ID` (audited `inbound.reveal` by the caller);
- `SealedPhoneField` (patient.phone): deterministic AES-SIV, so the identity checks and the
  staff search still find a patient by phone with plain `==` / `in_()` queries, while the
  table holds no phone in clear (equality is visible, as with the ID number's HMAC).

`configure(secret_key)` is called by server/context.py open_context before the migrations
run; sealing without it fails (never stores a message in clear).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

import peewee as pw
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV

PREFIX = "cf1:"
PHONE_PREFIX = "cfp1:"
_PHONE_AAD = [b"patient.phone"]
_state: dict = {}


class SealError(Exception):
    pass


def configure(secret_key: bytes) -> None:
    """Derive the message and phone keys from the server key (once per process, at
    start-up)."""
    _state["aead"] = AESGCM(hmac.new(secret_key, b"cloudfilm inbound raw v1",
                                     hashlib.sha256).digest())
    _state["siv"] = AESSIV(b"".join(hmac.new(secret_key, b"cloudfilm patient phone v1" + i,
                                             hashlib.sha256).digest() for i in (b"a", b"b")))
    _state["server_key"] = secret_key


def server_key() -> bytes:
    """The server key given to configure() (used by migration m0058 to sign the audit head)."""
    if "server_key" not in _state:
        raise SealError("personal_data.configure(secret_key) was not called")
    return _state["server_key"]


def _aead() -> AESGCM:
    if "aead" not in _state:
        raise SealError("personal_data.configure(secret_key) was not called")
    return _state["aead"]


def _aad(channel: str, control_id: str) -> bytes:
    return f"inbound_message\x1f{channel}\x1f{control_id[:128]}".encode("utf-8")


def is_sealed(value: str | None) -> bool:
    return bool(value) and value.startswith(PREFIX)


def seal(text: str, channel: str, control_id: str) -> str:
    """The stored form of a raw message (already sealed text is kept as it is)."""
    if is_sealed(text):
        return text
    nonce = os.urandom(12)
    ct = _aead().encrypt(nonce, (text or "").encode("utf-8"), _aad(channel, control_id))
    return PREFIX + base64.b64encode(nonce + ct).decode("ascii")


def unseal(value: str, channel: str, control_id: str) -> str:
    """The message of a stored value; SealError if it was altered or the key is another."""
    if not is_sealed(value):
        return value or ""
    try:
        blob = base64.b64decode(value[len(PREFIX):], validate=True)
        return _aead().decrypt(blob[:12], blob[12:], _aad(channel, control_id)).decode("utf-8")
    except SealError:
        raise
    except Exception as exc:  # noqa: BLE001 - InvalidTag, bad base64: say which, not how
        raise SealError(f"the stored message cannot be decrypted ({type(exc).__name__}): "
                        "altered, or sealed with another server key") from None


# patient phones ----------------------------------------------------------------------------
def seal_phone(phone: str | None) -> str | None:
    """Deterministic AES-SIV: the same phone always gives the same stored text, so the
    identity checks and the staff search still find a patient by phone (equality only, like
    the ID number's HMAC) while the table holds no phone in clear."""
    if not phone or phone.startswith(PHONE_PREFIX):
        return phone
    if "siv" not in _state:
        raise SealError("personal_data.configure(secret_key) was not called")
    ct = _state["siv"].encrypt(phone.encode("utf-8"), _PHONE_AAD)
    return PHONE_PREFIX + base64.b64encode(ct).decode("ascii")


def unseal_phone(value: str | None) -> str | None:
    if not value or not value.startswith(PHONE_PREFIX):
        return value                    # empty, or stored before migration m0058
    if "siv" not in _state:
        raise SealError("personal_data.configure(secret_key) was not called")
    try:
        ct = base64.b64decode(value[len(PHONE_PREFIX):], validate=True)
        return _state["siv"].decrypt(ct, _PHONE_AAD).decode("utf-8")
    except Exception as exc:  # noqa: BLE001 - InvalidTag, bad base64
        raise SealError(f"a stored phone cannot be decrypted ({type(exc).__name__})") from None


class SealedPhoneField(pw.CharField):
    """A phone column stored sealed (seal_phone) and read back in clear; comparisons with
    == and in_() seal their operand the same way, so queries need no change."""

    def db_value(self, value):
        return super().db_value(seal_phone(value) if isinstance(value, str) else value)

    def python_value(self, value):
        return unseal_phone(super().python_value(value))


# redaction ---------------------------------------------------------------------------------
# ID numbers: 18 characters (17 digits and a digit or X) or the old 15 digits; mainland
# mobiles (11 digits from 1[3-9]), with an optional +86/86 prefix; landlines 0AA(A)-NNNNNNN(N).
# A component of a DICOM UID (digits between dots) is left alone.
_ID_RE = re.compile(r"(?<![0-9A-Za-z])(?<!\d\.)(\d{17}[0-9Xx]|\d{15})(?![0-9A-Za-z])(?!\.\d)")
_MOBILE_RE = re.compile(r"(?<!\d)(?<!\d\.)(?:\+?86[- ]?)?(1[3-9]\d{9})(?!\d)(?!\.\d)")
_LANDLINE_RE = re.compile(r"(?<!\d)(\(?0\d{2,3}\)?[- ]?\d{7,8})(?!\d)")


def _mask_id(v: str) -> str:
    return v[:4] + "*" * (len(v) - 8) + v[-4:]


def _mask_phone(p: str) -> str:
    return p[:3] + "****" + p[-4:]


def redact(text: str) -> str:
    """text with every ID number and phone number masked (4420**********123X, 138****0000)."""
    if not text:
        return ""
    text = _ID_RE.sub(lambda m: _mask_id(m.group(1)), text)
    text = _MOBILE_RE.sub(lambda m: _mask_phone(m.group(1)), text)
    return _LANDLINE_RE.sub(lambda m: m.group(1)[:4] + "****" + m.group(1)[-2:], text)


# stored messages ---------------------------------------------------------------------------
def inbound_message(message_id: int, *, reveal: bool = False) -> dict | None:
    """One stored inbound message: redacted (staff screens) or decrypted (reveal=True, for the
    system admin's CLI; the caller audits it). None if there is no such message."""
    from .schema import InboundMessage
    m = InboundMessage.get_or_none(InboundMessage.id == message_id)
    if m is None:
        return None
    try:
        text = unseal(m.raw, m.channel, m.control_id)
        problem = ""
    except SealError as exc:
        text, problem = "", str(exc)
    return {"id": m.id, "channel": m.channel, "control_id": m.control_id,
            "type": m.message_type, "outcome": m.outcome, "reason": redact(m.reason),
            "received_at": m.received_at.isoformat() + "Z" if m.received_at else None,
            "sealed": is_sealed(m.raw), "problem": problem,
            "raw": text if reveal else redact(text)}


def seal_stored_messages(batch: int = 200) -> int:
    """Seal every inbound message still stored in clear (migration m0058). Returns how many."""
    from .schema import InboundMessage
    done = 0
    last = 0
    while True:
        rows = list(InboundMessage.select(InboundMessage.id, InboundMessage.channel,
                                          InboundMessage.control_id, InboundMessage.raw)
                    .where(InboundMessage.id > last).order_by(InboundMessage.id).limit(batch))
        if not rows:
            return done
        for m in rows:
            last = m.id
            if is_sealed(m.raw):
                continue
            InboundMessage.update(raw=seal(m.raw, m.channel, m.control_id)).where(
                InboundMessage.id == m.id).execute()
            done += 1
