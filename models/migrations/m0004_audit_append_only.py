"""Audit rows are append-only: triggers refuse UPDATE and DELETE."""
from ..audit import drop_append_only_triggers, install_append_only_triggers


def up(db):
    install_append_only_triggers()


def down(db):
    drop_append_only_triggers()
