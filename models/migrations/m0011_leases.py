"""Role leases: which process runs each singleton job (outbox delivery, integrity scrub,
folder watcher, WeChat token refresh) for the whole deployment."""
from ..leases import LEASE_MODELS


def up(db):
    db.create_tables(LEASE_MODELS, safe=True)


def down(db):
    db.drop_tables(list(reversed(LEASE_MODELS)), safe=True)
