"""HL7 v2 text: character sets by MSH-18, a small tolerant parser, acknowledgements.

Parsing is deliberately plain (segments by CR, fields by the declared separators) so that a
field mapping can be documented and configured as "PID-19" or "PID-13.1"; docs/hl7-mapping.md
lists every field we read.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import re
import time
from dataclasses import dataclass

# MSH-18 values (HL7 table 0211 and what Chinese HIS vendors send) → Python codec
CHARSETS = {
    "": None,
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "GB 18030-2000": "gb18030",
    "GB18030": "gb18030",
    "GB 18030": "gb18030",
    "GB18030-2005": "gb18030",
    "GBK": "gb18030",            # GB18030 is a superset of GBK
    "GB2312": "gb18030",
    "CNS 11643-1992": None,
    "8859/1": "latin-1",
}
FALLBACKS = {"GB18030": "gb18030", "GBK": "gb18030", "UTF-8": "utf-8", "ISO-8859-1": "latin-1"}
CJK_RE = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff]")


class Hl7Error(Exception):
    """The message cannot be read; the text is the reason sent back in the ACK (AE)."""


@dataclass
class Decoded:
    text: str
    charset_name: str     # MSH-18 as received (for the ACK)
    codec: str


def _msh_raw(raw: bytes, n: int) -> str:
    """MSH-n's first component from the raw bytes (before the character set is known)."""
    first = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
    if not first.startswith(b"MSH") or len(first) < 8:
        return ""
    fs = first[3:4]
    fields = first.split(fs)
    # fields[0] = "MSH", fields[1] = encoding characters = MSH-2, so MSH-n = fields[n-1]
    if len(fields) >= n:
        return fields[n - 1].split(b"^")[0].decode("latin-1").strip()
    return ""


def _msh18_raw(raw: bytes) -> str:
    return _msh_raw(raw, 18)


def parse_overrides(text: str) -> dict[str, str]:
    """Setting hl7_charset_overrides 'HIS=GB18030,LIS=UTF-8' → {"HIS": "gb18030", …}: the
    character set a sender (MSH-3 or MSH-4) really uses, whatever its MSH-18 says."""
    out = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        sender, _, charset = item.partition("=")
        codec = FALLBACKS.get(charset.strip().upper())
        if not sender.strip() or codec is None:
            raise ValueError(f"setting hl7_charset_overrides: {item.strip()!r} is not "
                             f"SENDER=CHARSET with CHARSET one of {', '.join(FALLBACKS)}")
        out[sender.strip().upper()] = codec
    return out


def decode_message(raw: bytes, fallback: str = "GB18030",
                   overrides: dict[str, str] | None = None) -> Decoded:
    """Bytes of one message → text, by MSH-18; an empty MSH-18 means UTF-8 when the bytes
    are valid UTF-8, otherwise the configured fallback (GB18030 also reads GBK). A sender
    named in `overrides` (by MSH-3 or MSH-4) is read in its configured character set
    instead: some HIS declare 8859/1 or UTF-8 and send GBK."""
    declared = _msh18_raw(raw)
    for sender in (_msh_raw(raw, 3).upper(), _msh_raw(raw, 4).upper()):
        if sender and overrides and sender in overrides:
            codec = overrides[sender]
            try:
                return Decoded(raw.decode(codec), declared, codec)
            except UnicodeDecodeError as exc:
                raise Hl7Error(f"the message is not valid {codec} (the character set set for "
                               f"sender {sender[:40]}): byte {exc.start} cannot be "
                               "decoded") from None
    key = declared.upper()
    if key not in CHARSETS:
        raise Hl7Error(f"MSH-18 character set {declared[:32]!r} is not supported: use "
                       "UNICODE UTF-8 or GB 18030-2000")
    codec = CHARSETS[key]
    if key and codec is None:
        raise Hl7Error(f"MSH-18 character set {declared[:32]!r} is not supported")
    if codec:
        try:
            return Decoded(raw.decode(codec), declared, codec)
        except UnicodeDecodeError as exc:
            raise Hl7Error(f"the message is not valid {declared} (MSH-18): byte "
                           f"{exc.start} cannot be decoded") from None
    try:
        return Decoded(raw.decode("utf-8"), declared, "utf-8")
    except UnicodeDecodeError:
        pass
    fb = FALLBACKS.get(fallback.upper(), "gb18030")
    try:
        return Decoded(raw.decode(fb), declared, fb)
    except UnicodeDecodeError as exc:
        raise Hl7Error(f"MSH-18 is empty and the message is neither UTF-8 nor {fallback} "
                       f"(byte {exc.start}); declare the character set in MSH-18") from None


class Message:
    """A parsed HL7 v2 message: message.get("PID", 3, comp=1, rep=0)."""

    def __init__(self, text: str, codec: str = "utf-8"):
        self.codec = codec or "utf-8"     # of the bytes, for \Xhh\ escapes
        text = text.replace("\r\n", "\r").replace("\n", "\r").lstrip("\x0b\ufeff \t")
        segs = [s for s in text.split("\r") if s.strip()]
        if not segs or not segs[0].startswith("MSH") or len(segs[0]) < 8:
            raise Hl7Error("the message does not start with an MSH segment")
        self.fs = segs[0][3]
        enc = segs[0][4:8]
        if len(enc) < 4 or self.fs in enc:
            raise Hl7Error("MSH-2 encoding characters are malformed (expected ^~\\&)")
        self.cs, self.rs, self.esc, self.ss = enc[0], enc[1], enc[2], enc[3]
        self.segments: list[tuple[str, list[str]]] = []
        for s in segs:
            fields = s.split(self.fs)
            name = fields[0].strip()
            if not re.fullmatch(r"[A-Z][A-Z0-9]{2}", name):
                raise Hl7Error(f"segment {len(self.segments) + 1} has an invalid name "
                               f"{name[:8]!r} (truncated or garbled message?)")
            if name == "MSH":
                fields = ["MSH", self.fs] + fields[1:]
            if name == "ADD" and len(self.segments) > 1:
                # continuation (HL7 2.10.2): ADD-1 continues the previous segment's last
                # field, further ADD fields follow it
                prev = self.segments[-1][1]
                prev[-1] += fields[1] if len(fields) > 1 else ""
                prev.extend(fields[2:])
                continue
            self.segments.append((name, fields))

    def all(self, name: str) -> list[list[str]]:
        return [f for n, f in self.segments if n == name]

    def first(self, name: str) -> list[str] | None:
        for n, f in self.segments:
            if n == name:
                return f
        return None

    def raw_field(self, seg: list[str] | None, n: int) -> str:
        if seg is None or n >= len(seg):
            return ""
        return seg[n]

    def reps(self, seg, n: int) -> list[str]:
        v = self.raw_field(seg, n)
        if seg is not None and seg[0] == "MSH" and n == 2:
            return [v]
        return v.split(self.rs) if v else []

    def comps(self, value: str) -> list[str]:
        return value.split(self.cs)

    def get(self, seg_or_name, n: int, comp: int = 1, rep: int = 0) -> str:
        seg = self.first(seg_or_name) if isinstance(seg_or_name, str) else seg_or_name
        reps = self.reps(seg, n)
        if rep >= len(reps):
            return ""
        parts = self.comps(reps[rep])
        if comp - 1 >= len(parts):
            return ""
        return self.unescape(parts[comp - 1].split(self.ss)[0]).strip()

    def component_raw(self, seg, n: int, comp: int, rep: int = 0) -> str:
        reps = self.reps(seg, n)
        if rep >= len(reps):
            return ""
        parts = self.comps(reps[rep])
        return parts[comp - 1] if comp - 1 < len(parts) else ""

    def unescape(self, s: str) -> str:
        """Every HL7 escape sequence: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ (delimiters), \\Xhh..\\ (bytes in the
        message's character set; CR LF / CR / LF → newline), \\.br\\ and \\.sp\\ (newline),
        highlighting \\H\\ \\N\\ and the other formatting or charset switches (dropped)."""
        if self.esc not in s:
            return s
        e = self.esc
        table = {"F": self.fs, "S": self.cs, "T": self.ss, "R": self.rs, "E": e,
                 ".br": "\n"}

        def one(m: re.Match) -> str:
            code = m.group(1)
            if code in table:
                return table[code]
            if code[:1] == "X":
                try:
                    return bytes.fromhex(code[1:]).decode(self.codec, errors="replace")
                except ValueError:
                    return ""
            if code.startswith(".sp"):
                return "\n" * max(1, int(code[3:] or 1))
            return ""          # \H\ \N\ \.fi\ \.in±n\ \Cxxyy\ \Mxxyyzz\ \Zxx\: formatting only
        out = re.sub(re.escape(e) + r"(F|S|T|R|E|H|N|\.br|\.sp[0-9]*|\.fi|\.nf|\.ce|"
                     r"\.(?:in|ti|sk)[+-]?[0-9]*|X[0-9A-Fa-f]*|C[0-9A-Fa-f]*|M[0-9A-Fa-f]*|"
                     r"Z[^" + re.escape(e) + r"]*)" + re.escape(e), one, s)
        return out.replace("\r\n", "\n").replace("\r", "\n")

    # header ----------------------------------------------------------------------------
    @property
    def control_id(self) -> str:
        return self.get("MSH", 10)

    @property
    def message_type(self) -> str:
        t, trig = self.get("MSH", 9, 1), self.get("MSH", 9, 2)
        return f"{t}^{trig}" if trig else t

    @property
    def version(self) -> str:
        return self.get("MSH", 12) or "2.5"


def escape(s: str) -> str:
    return (s.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\").replace("\r", " ").replace("\n", " "))


_counter = itertools.count(1)


def new_control_id(prefix: str = "CF") -> str:
    return f"{prefix}{time.strftime('%Y%m%d%H%M%S')}{next(_counter) % 1000000:06d}"


def hl7_timestamp(t: dt.datetime | None = None) -> str:
    return (t or dt.datetime.now()).strftime("%Y%m%d%H%M%S")


def parse_ts(s: str) -> dt.datetime | None:
    s = (s or "").strip().split("+")[0].split("-")[0].split(".")[0]
    if len(s) < 8 or not s[:8].isdigit():
        return None
    try:
        return dt.datetime(int(s[0:4]), int(s[4:6]), int(s[6:8]),
                           int(s[8:10] or 0), int(s[10:12] or 0), int(s[12:14] or 0))
    except ValueError:
        return None


def parse_date(s: str) -> dt.date | None:
    t = parse_ts(s)
    return t.date() if t else None


HL7_ERRORS = {0: "Message accepted", 100: "Segment sequence error",
              101: "Required field missing", 102: "Data type error",
              103: "Table value not found", 200: "Unsupported message type",
              201: "Unsupported event code", 202: "Unsupported processing id",
              203: "Unsupported version id", 204: "Unknown key identifier",
              205: "Duplicate key identifier", 206: "Application record locked",
              207: "Application internal error"}
LOCATION_RE = re.compile(r"^([A-Z][A-Z0-9]{2})-(\d{1,3})(?:\.(\d{1,3}))?$")


@dataclass(frozen=True)
class AckIssue:
    """One ERR segment: where (an HL7 location such as PID-19 or PID-13.1, may be empty),
    the HL7 table 0357 code, severity E or W, and the text for the sender's staff."""
    where: str
    text: str
    code: int = 207
    severity: str = "E"


def _version_tuple(ver: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in ver.split(".")[:3])
    except ValueError:
        return (2, 5)


def _err_segments(ver: str, issues) -> list[str]:
    """ERR per version: 2.5 and later one ERR per issue with ERR-2 location (ERL), ERR-3
    error code (HL7 table 0357), ERR-4 severity and ERR-8 text; up to 2.4 one ERR whose
    ERR-1 (ELD: segment^sequence^field^code&text&HL70357) repeats per issue."""
    new = _version_tuple(ver) >= (2, 5)
    segs, eld = [], []
    for i in issues:
        m = LOCATION_RE.match(i.where or "")
        code = f"{i.code}^{escape(HL7_ERRORS.get(i.code, 'Application internal error'))}^HL70357"
        if new:
            loc = ""
            if m:
                loc = f"{m.group(1)}^1^{m.group(2)}" + (f"^1^{m.group(3)}" if m.group(3) else "")
            sev = i.severity if i.severity in ("E", "W", "I") else "E"
            segs.append(f"ERR||{loc}|{code}|{sev}||||{escape(i.text[:500])}")
        else:
            where = f"{m.group(1)}^1^{m.group(2)}" if m else "^^"
            eld.append(f"{where}^{code.replace('^', '&')}")
    if eld:
        segs.append("ERR|" + "~".join(eld))
    return segs


def build_ack(msg: Message | None, code: str, text: str = "", *, app: str = "CLOUDFILM",
              charset: str = "", issues=()) -> str:
    """ACK with MSA-1 code (AA / AE / AR) and MSA-2 echoing MSH-10; ERR segments (the
    message's version: ERR-1 up to 2.4, ERR-2/3/4/8 from 2.5) carry the reason of an AE/AR,
    and the warnings (severity W) of an AA: fields that were not used. Passes hl7apy's strict
    validation for 2.3.1 to 2.8."""
    if msg is not None:
        to_app, to_fac = msg.get("MSH", 3), msg.get("MSH", 4)
        trig = msg.get("MSH", 9, 2)
        ctrl, ver = msg.control_id, msg.version
        charset = charset or msg.get("MSH", 18)
    else:
        to_app = to_fac = trig = ctrl = ""
        ver = "2.5"
    vt = _version_tuple(ver)
    if vt <= (2, 3):
        mtype = f"ACK^{escape(trig)}" if trig else "ACK"      # 2.3: MSG without structure
    else:
        mtype = f"ACK^{escape(trig)}^ACK"
    msh = ["MSH", "^~\\&", escape(app), escape(app), escape(to_app), escape(to_fac),
           hl7_timestamp(), "", mtype, new_control_id("ACK"), "P", escape(ver), "", "", "",
           "", "", escape(charset)]
    # MSA-3 (text) was withdrawn in 2.7: from then on the text is only in ERR-8
    msa_text = f"|{escape(text[:200])}" if vt < (2, 7) and text else ""
    segs = ["|".join(msh).rstrip("|"), f"MSA|{code}|{escape(ctrl)}{msa_text}"]
    if not issues and code != "AA":
        issues = [AckIssue("", text, 207, "E")]
    segs += _err_segments(ver, issues)
    return "\r".join(segs) + "\r"


def encode(text: str, charset: str, fallback_codec: str = "utf-8") -> bytes:
    codec = CHARSETS.get((charset or "").upper()) or fallback_codec
    return text.encode(codec, errors="replace")


def ack_code(ack_text: str) -> tuple[str, str, str]:
    """(MSA-1, MSA-2, MSA-3) of an acknowledgement text."""
    for seg in ack_text.replace("\n", "\r").split("\r"):
        if seg.startswith("MSA"):
            f = seg.split(seg[3]) if len(seg) > 3 else ["MSA"]
            f += [""] * 4
            return f[1], f[2], f[3]
    return "", "", ""


def fallback_control_id(raw: bytes) -> str:
    return "nocid-" + hashlib.sha256(raw).hexdigest()[:20]


def person_name(msg: Message, seg, n: int) -> str:
    family, given = msg.get(seg, n, 1), msg.get(seg, n, 2)
    parts = [p for p in (family, given) if p]
    if any(CJK_RE.search(p) for p in parts):
        return "".join(parts)
    return " ".join(parts)
