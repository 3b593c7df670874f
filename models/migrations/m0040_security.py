"""Security: password history, TOTP credentials, recovery codes, integrity findings."""
from ..security import SECURITY_MODELS


def up(db):
    db.create_tables(SECURITY_MODELS, safe=True)


def down(db):
    db.drop_tables(list(reversed(SECURITY_MODELS)), safe=True)
