"""Staff accounts (the first system administrator is created at first start)."""
from ..schema import StaffUser


def up(db):
    db.create_tables([StaffUser], safe=True)


def down(db):
    db.drop_tables([StaffUser], safe=True)
