"""Trusted integration peers (issue 14): the systems that may send us HL7 messages, DICOM
instances or import-API documents, configured by the system admin (table integration_peer,
migration m0055), never assumed.

A peer: name, kind (hl7 / dicom / import), source addresses (CIDR list; empty = any
address), AE title (DICOM), the message types (HL7: ADT^A08, ORU^R01, ...; a bare ADT means
every ADT trigger) or SOP classes (DICOM; empty = every storage class) it may send,
may_change_identity (only the hospital's patient master may change a patient's phone or
ID number), a character set override and enabled.

`admit()` is the one decision the listeners ask: a sender matching an enabled peer is
admitted with that peer's rights; an unknown sender is admitted only when the listener is
bound to loopback (as before) or the legacy AE-title list allows it, and is refused
otherwise. Listeners read the table through `PEERS`, a cache at most 5 s stale.
Nothing here logs or audits patient data.
"""
from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass, field

import peewee as pw

from .catalog import CatalogError, NotFound
from .changes import announce
from .db import database, write_transaction
from .schema import BaseModel, utcnow

KINDS = ("hl7", "dicom", "import")
CACHE_TTL_S = 5.0


class IntegrationPeer(BaseModel):
    name = pw.CharField(max_length=64, unique=True)
    kind = pw.CharField(max_length=16)                       # hl7 / dicom / import
    addresses = pw.TextField(default="")                     # CIDRs, comma-separated
    ae_title = pw.CharField(max_length=16, default="")       # DICOM calling AE title
    allowed = pw.TextField(default="")                       # message types / SOP class UIDs
    may_change_identity = pw.BooleanField(default=False)
    charset = pw.CharField(max_length=32, default="")
    enabled = pw.BooleanField(default=True)
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "integration_peer"


PEER_MODELS = [IntegrationPeer]


class PeerError(CatalogError):
    """A peer definition that cannot be saved (the message says which field)."""


@dataclass(frozen=True)
class Peer:
    name: str
    kind: str
    networks: tuple = ()
    ae_title: str = ""
    allowed: tuple = ()
    may_change_identity: bool = False
    charset: str = ""
    enabled: bool = True

    def has_address(self, address: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address((address or "").split("%")[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip.version == n.version and ip in n for n in self.networks)

    def allows(self, what: str) -> bool:
        """An HL7 message type (ADT^A08) or a SOP class UID; empty list = everything."""
        if not self.allowed or not what:
            return True
        what = what.upper()
        return any(what == a or what.split("^")[0] == a for a in self.allowed)

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind,
                "addresses": [str(n) for n in self.networks], "ae_title": self.ae_title,
                "allowed": list(self.allowed), "may_change_identity": self.may_change_identity,
                "charset": self.charset, "enabled": self.enabled}


def _split(text: str) -> list[str]:
    return [p.strip() for p in (text or "").replace("\n", ",").split(",") if p.strip()]


def _peer(row: IntegrationPeer) -> Peer:
    return Peer(row.name, row.kind,
                tuple(ipaddress.ip_network(a, strict=False) for a in _split(row.addresses)),
                row.ae_title, tuple(a.upper() for a in _split(row.allowed)),
                bool(row.may_change_identity), row.charset, bool(row.enabled))


def is_loopback(host: str) -> bool:
    """A listener bound to loopback (127.0.0.0/8, ::1, localhost)."""
    if (host or "").strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False


# the cache the listeners read ----------------------------------------------------------------
class PeerCache:
    """Every enabled peer, re-read at most every CACHE_TTL_S seconds."""

    def __init__(self, ttl_s: float = CACHE_TTL_S):
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._at = 0.0
        self._key: tuple = ()
        self._peers: tuple[Peer, ...] = ()

    def all(self) -> tuple[Peer, ...]:
        # keyed by the bound database too: another database (a restore, a test) is re-read
        db = database.obj
        key = (id(db), getattr(db, "database", ""))
        with self._lock:
            if key == self._key and time.monotonic() - self._at < self.ttl_s:
                return self._peers
        peers = tuple(_peer(r) for r in IntegrationPeer.select().where(
            IntegrationPeer.enabled == True).order_by(IntegrationPeer.name))   # noqa: E712
        with self._lock:
            self._peers, self._at, self._key = peers, time.monotonic(), key
        return peers

    def forget(self) -> None:
        with self._lock:
            self._at = 0.0


PEERS = PeerCache()


@dataclass(frozen=True)
class Admission:
    allowed: bool
    peer: Peer | None = None         # the matching peer (None: an unknown sender let in)
    reason: str = ""                 # why refused (no patient data)

    @property
    def may_change_identity(self) -> bool:
        return self.peer.may_change_identity if self.peer is not None else self.allowed

    @property
    def charset(self) -> str:
        return self.peer.charset if self.peer is not None else ""


@dataclass
class Gate:
    """What one listener admits: kind, whether it is bound to loopback, the legacy allowed
    AE titles (dicom_allowed_aets), and allow_unknown (setting peers_allow_unknown)."""
    kind: str
    loopback: bool
    legacy_aets: list[str] = field(default_factory=list)
    allow_unknown: bool = False
    cache: PeerCache = field(default_factory=lambda: PEERS)

    def admit(self, address: str, *, ae_title: str = "", what: str = "") -> Admission:
        """May this sender (address, DICOM calling AE title) connect, and send `what` (an
        HL7 message type or a SOP class UID; empty: only the connection is checked)?"""
        ae = (ae_title or "").strip()
        mine = [p for p in self.cache.all() if p.kind == self.kind]
        known = [p for p in mine if p.has_address(address)
                 and (self.kind != "dicom" or p.ae_title.strip() == ae)]
        if known:
            for p in known:
                if p.allows(what):
                    return Admission(True, p)
            return Admission(False, known[0], f"{what or 'this'} is not allowed for peer "
                                              f"{known[0].name}")
        if self.kind == "dicom" and self.legacy_aets:
            if ae in self.legacy_aets:
                return Admission(True)
            return Admission(False, None, "calling AE title not in the peer table or "
                                          "dicom_allowed_aets")
        if self.loopback or self.allow_unknown:
            return Admission(True)
        return Admission(False, None, "sender not in the peer table")


def audit_refusal(auditor, kind: str, address: str, *, ae_title: str = "",
                  message_type: str = "", reason: str = "") -> None:
    """Audit record peer.refused: address, AE title, message type; no patient data."""
    if auditor is None:
        return
    detail = f"kind={kind} ae_title={ae_title[:16]} message_type={message_type[:64]} " \
             f"reason={reason[:200]}"
    auditor.record("peer.refused", actor_kind="peer", actor_id=(ae_title or address)[:64],
                   ip=address, object_type="integration_peer", object_id=kind,
                   outcome="refused", detail=detail)


# administration ------------------------------------------------------------------------------
HL7_CHARSETS = ("GB18030", "GBK", "UTF-8", "ISO-8859-1")
DICOM_CHARSETS = ("GB18030", "GBK", "ISO_IR 192", "ISO_IR 100", "ISO 2022 IR 58")


def _text_list(value, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return _split(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise PeerError(f"{what} 应为文本列表 / {what} must be a list of text")


def clean_peer(d) -> dict:
    """Validate a peer definition (from the API or the CLI) into column values."""
    if not isinstance(d, dict):
        raise PeerError("请求应为 JSON 对象 / the peer must be a JSON object")
    name = d.get("name")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 64:
        raise PeerError("名称须为 1–64 个字符 / name must have 1 to 64 characters")
    kind = d.get("kind")
    if kind not in KINDS:
        raise PeerError("类型须为 hl7、dicom 或 import / kind must be hl7, dicom or import")
    addresses = _text_list(d.get("addresses"), "addresses")
    for a in addresses:
        try:
            ipaddress.ip_network(a, strict=False)
        except ValueError:
            raise PeerError(f"地址 {a[:50]!r} 不是 IP 或 CIDR / address {a[:50]!r} is not "
                            "an IP address or CIDR network") from None
    ae = d.get("ae_title") or ""
    if not isinstance(ae, str) or len(ae.strip()) > 16 or "\\" in ae:
        raise PeerError("AE 标题至多 16 个字符 / AE title: at most 16 characters")
    if kind == "dicom" and not ae.strip():
        raise PeerError("DICOM 对端须有 AE 标题 / a DICOM peer needs its AE title")
    allowed = [a.upper() for a in _text_list(d.get("allowed"), "allowed")]
    for a in allowed:
        if kind == "dicom" and not all(p.isdigit() for p in a.split(".")):
            raise PeerError(f"{a[:64]!r} 不是 SOP 类 UID / is not a SOP class UID")
        if kind == "hl7" and not all(p.isalnum() for p in a.split("^")):
            raise PeerError(f"{a[:64]!r} 不是消息类型（如 ADT^A08）/ is not a message type "
                            "such as ADT^A08")
    charset = (d.get("charset") or "")
    if not isinstance(charset, str):
        raise PeerError("charset must be text")
    charset = charset.strip().upper()
    choices = DICOM_CHARSETS if kind == "dicom" else HL7_CHARSETS
    if charset and charset not in choices:
        raise PeerError(f"字符集须为 {', '.join(choices)} 之一 / charset must be one of "
                        f"{', '.join(choices)}")
    for key in ("may_change_identity", "enabled"):
        if not isinstance(d.get(key, key == "enabled"), bool):
            raise PeerError(f"{key} 须为 true 或 false / {key} must be true or false")
    return {"name": name.strip(), "kind": kind, "addresses": ",".join(addresses),
            "ae_title": ae.strip(), "allowed": ",".join(allowed),
            "may_change_identity": bool(d.get("may_change_identity", False)),
            "charset": charset, "enabled": bool(d.get("enabled", True))}


def list_peers() -> list[dict]:
    return [_peer(r).as_dict() | {"updated_at": r.updated_at.isoformat()}
            for r in IntegrationPeer.select().order_by(IntegrationPeer.kind,
                                                       IntegrationPeer.name)]


def _audit_detail(values: dict) -> str:
    return " ".join(f"{k}={values[k]}" for k in ("kind", "addresses", "ae_title", "allowed",
                                                    "may_change_identity", "charset",
                                                    "enabled"))[:2000]


def save_peer(d, *, actor, auditor) -> tuple[dict, bool]:
    """Create or update (by name) a peer; audited peer.create / peer.update. Returns the
    peer and whether it was created."""
    values = clean_peer(d)
    with write_transaction():
        row = IntegrationPeer.get_or_none(IntegrationPeer.name == values["name"])
        created = row is None
        if created:
            row = IntegrationPeer.create(**values)
        else:
            for k, v in values.items():
                setattr(row, k, v)
            row.updated_at = utcnow()
            row.save()
        auditor.record("peer.create" if created else "peer.update", actor_kind=actor.kind,
                       actor_id=actor.username, ip=actor.ip, object_type="integration_peer",
                       object_id=values["name"], detail=_audit_detail(values))
        announce()             # every node's peer cache within a second (models/changes.py)
    PEERS.forget()
    return _peer(row).as_dict(), created


def delete_peer(name: str, *, actor, auditor) -> None:
    with write_transaction():
        row = IntegrationPeer.get_or_none(IntegrationPeer.name == name)
        if row is None:
            raise NotFound("没有这个对端 / no peer with this name")
        row.delete_instance()
        auditor.record("peer.delete", actor_kind=actor.kind, actor_id=actor.username,
                       ip=actor.ip, object_type="integration_peer", object_id=name)
        announce()
    PEERS.forget()
