"""Integration service accounts (issue 14, separation of duties):

- staff_user.service_account: an account the system admin created for a machine (an
  integration, a script). Only such accounts may receive an API token from the system admin;
  they hold no admin role and cannot sign in with a password on the login page.

Idempotent: the column is added only when it is missing."""
from ..schema import StaffUser
from .columns import add_columns, drop_columns

COLUMNS = ((StaffUser, "service_account"),)


def up(db):
    add_columns(db, COLUMNS)


def down(db):
    drop_columns(db, COLUMNS)
