"""Personal data at rest and a signed audit head (issue 14 items 6 and 7):

- inbound_message.raw: every message still stored in clear (the HL7 listener and the import
  API kept full ID numbers and phones) is sealed with AES-256-GCM under a key derived from
  the server key (models/personal_data.py); its reason (and a failed one's answer) redacted;
- patient.phone: sealed with deterministic AES-SIV (the same phone gives the same stored
  text, so lookups by phone still work); VARCHAR(128) on MySQL/MariaDB;
- audit_head.signature: an HMAC (key derived from the server key) over the head's id and
  HMAC, so a head moved back to an older record is detected (models/audit.py); the current
  head is signed here.

Needs the server key (server/context.py open_context configures it before migrating).
Idempotent: the column is added only when missing; sealed rows are left as they are; signing
the head again gives the same signature."""
from playhouse.migrate import SchemaMigrator, migrate

from ..db import is_mysql
from ..schema import AuditHead, InboundMessage, Patient


def up(db):
    from .. import personal_data
    from ..audit import Auditor
    key = personal_data.server_key()          # SealError if the key was not configured
    if not is_mysql():
        # the clear text the updates below replace is zeroed, not left in free page space
        db.execute_sql("PRAGMA secure_delete = ON")
    table = AuditHead._meta.table_name
    if "signature" not in {c.name for c in db.get_columns(table)}:
        migrate(SchemaMigrator.from_database(db).add_column(
            table, "signature", AuditHead._meta.fields["signature"]))
    personal_data.seal_stored_messages()
    if is_mysql():
        db.execute_sql("ALTER TABLE patient MODIFY phone VARCHAR(128) NULL")
    clear = db.execute_sql("SELECT id, phone FROM patient WHERE phone IS NOT NULL AND phone <> ''"
                           ).fetchall()
    for pid, phone in clear:
        if not phone.startswith(personal_data.PHONE_PREFIX):
            Patient.update(phone=phone).where(Patient.id == pid).execute()   # sealed on write
    changed = []
    for m in InboundMessage.select(InboundMessage.id, InboundMessage.reason, InboundMessage.ack,
                                   InboundMessage.outcome).iterator():
        # an applied message's answer is repeated to a resend as stored: kept
        reason = personal_data.redact(m.reason)
        ack = m.ack if m.outcome == "applied" else personal_data.redact(m.ack)
        if (reason, ack) != (m.reason, m.ack):
            changed.append((m.id, reason, ack))
    for mid, reason, ack in changed:
        InboundMessage.update(reason=reason, ack=ack).where(InboundMessage.id == mid).execute()
    Auditor(key).sign_head()


def down(db):
    # Older code compares patient.phone in clear: unseal it. Keeping the sealed messages and
    # the signature column is harmless to older code (it never reads inbound_message.raw
    # back); unsealing them would put personal data in clear again.
    from .. import personal_data
    rows = db.execute_sql("SELECT id, phone FROM patient WHERE phone LIKE " + db.param,
                          (personal_data.PHONE_PREFIX + "%",)).fetchall()
    for pid, sealed in rows:
        db.execute_sql("UPDATE patient SET phone = %s WHERE id = %s"
                       % (db.param, db.param), (personal_data.unseal_phone(sealed), pid))
