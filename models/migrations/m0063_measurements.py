"""Saved measurements (issue 18): a doctor's measurements on the images of an exam
(models/measurements.py), kept per exam and user, exported as a DICOM Structured Report.

Idempotent: the table (and its (exam, staff_user) index) is created only when missing."""
from ..schema import MEASUREMENT_MODELS


def up(db):
    db.create_tables(MEASUREMENT_MODELS, safe=True)


def down(db):
    db.drop_tables(list(reversed(MEASUREMENT_MODELS)), safe=True)
