"""Sessions, staff API tokens, run-time settings and the audit chain head."""
from ..schema import ApiToken, AuditHead, RuntimeSetting, Session


def up(db):
    db.create_tables([Session, ApiToken, RuntimeSetting, AuditHead], safe=True)
    if not AuditHead.select().exists():
        AuditHead.create(id=1, last_id=0, last_hmac="")


def down(db):
    db.drop_tables([AuditHead, RuntimeSetting, ApiToken, Session], safe=True)
