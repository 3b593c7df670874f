"""Trusted integration peers and report history (issue 14):

- integration_peer: the HL7, DICOM and import-API senders the system admin allows (address,
  AE title, message types or SOP classes, may_change_identity, charset, enabled);
- report_version: the earlier content of a replaced report, readable by staff.

The old settings keep working: dicom_allowed_aets still admits its AE titles (from any
address) and the hl7/dicom charset override settings still apply; a peer's own charset
takes precedence. Idempotent: tables are created only when missing."""
from ..integration import REPORT_VERSION_MODELS
from ..peers import PEER_MODELS

MODELS = PEER_MODELS + REPORT_VERSION_MODELS


def up(db):
    db.create_tables(MODELS, safe=True)


def down(db):
    db.drop_tables(list(reversed(MODELS)), safe=True)
