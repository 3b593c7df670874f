"""A HIS that declares one character set and sends another (issue 15, item 5): MSH-18
8859/1 with GBK bytes showed the patient as "ÕÅÎ°"; hl7_charset_overrides names the sender
(MSH-3 or MSH-4) and its real character set."""
from __future__ import annotations

import pytest

from adapters.hl7_codec import decode_message, parse_overrides
from models.schema import Patient

from . import hl7_samples as S
from .test_mllp_framing import Peer

pytestmark = pytest.mark.db


@pytest.fixture
def lying_his(ctx, loop_thread):
    from server import integration
    ctx.config.set_base(hl7_charset_overrides="HIS=GBK, lis = utf-8")
    listener = loop_thread.run(integration.start_hl7(ctx, "127.0.0.1", 0))
    yield listener
    loop_thread.run(listener.stop())
    integration.SERVICES.hl7_executor.shutdown(wait=True)
    integration.SERVICES.__init__()


def _send(port: int, ctrl: str, pid: str) -> str:
    p = Peer(port)
    p.send(b"\x0b" + S.adt(ctrl, pid=pid, charset="8859/1").encode("gbk") + b"\x1c\r")
    code = p.ack()[0]
    p.close()
    return code


def test_without_an_override_the_declared_charset_garbles_the_name(hl7_server):
    assert _send(hl7_server.port, "CS1", "PCS1") == "AA"
    assert Patient.get(Patient.patient_id == "PCS1").name != "张伟"


def test_the_override_reads_the_sender_in_its_real_charset(lying_his):
    assert _send(lying_his.port, "CS2", "PCS2") == "AA"
    assert Patient.get(Patient.patient_id == "PCS2").name == "张伟"


def test_override_parsing_and_matching():
    assert parse_overrides(" HIS=GBK, lis = utf-8 ,") == {"HIS": "gb18030", "LIS": "utf-8"}
    for bad in ("HIS", "HIS=KOI8-R", "=GBK"):
        with pytest.raises(ValueError, match="hl7_charset_overrides"):
            parse_overrides(bad)
    raw = S.adt("X1", charset="UNICODE UTF-8").encode("gbk")
    # matched by MSH-4 (facility) too; an unnamed sender keeps its MSH-18
    assert "张^伟" in decode_message(raw, overrides={"ZSDFRMYY": "gb18030"}).text
    with pytest.raises(Exception, match="MSH-18|UTF-8"):
        decode_message(raw, overrides={"OTHER": "gb18030"})
