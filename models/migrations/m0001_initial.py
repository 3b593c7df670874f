"""Initial schema: patients, exams, series, instances, reports, quarantine, shares,
audit events, download log, outbox, inbound message log."""
from ..schema import (AuditEvent, DownloadLog, Exam, InboundMessage, Instance, Outbox,
                      Patient, Quarantine, Report, Series, Share)

TABLES = [Patient, Exam, Series, Instance, Report, Quarantine, Share, AuditEvent, DownloadLog,
          Outbox, InboundMessage]


def up(db):
    db.create_tables(TABLES, safe=True)


def down(db):
    db.drop_tables(list(reversed(TABLES)), safe=True)
