"""Patient-level QR codes (R1.4): one QR per patient leading to all of their exams after
identity verification, and the link from a QR to the patient sessions opened with it."""
from ..schema import PATIENT_QR_MODELS


def up(db):
    db.create_tables(PATIENT_QR_MODELS, safe=True)


def down(db):
    db.drop_tables(list(reversed(PATIENT_QR_MODELS)), safe=True)
