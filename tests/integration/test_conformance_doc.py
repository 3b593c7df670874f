"""docs/dicom-conformance.md says what the code does: the C-GET syntaxes, the C-STORE
statuses and the settings it names."""
from __future__ import annotations

import re

from ..conftest import ROOT

DOC = (ROOT / "docs" / "dicom-conformance.md").read_text(encoding="utf-8")


def test_the_c_get_list_is_the_code_s():
    from adapters.dicom_net import GET_TRANSFER_SYNTAXES
    listed = DOC.split("**C-GET (SCU).**")[1].split("At most")[0]
    assert re.findall(r"1\.2\.840\.10008\.1\.2(?:\.[0-9]+)*", listed) == GET_TRANSFER_SYNTAXES


def test_the_statuses_are_the_code_s():
    from adapters import dicom_net
    for name in ("SUCCESS", "OUT_OF_RESOURCES", "CANNOT_UNDERSTAND", "PROCESSING_FAILURE",
                 "DUPLICATE_CONFLICT"):
        assert f"0x{getattr(dicom_net, name):04X}" in DOC, name


def test_every_setting_named_exists():
    from server.config import SETTINGS_BY_NAME
    named = set(re.findall(r"setting `([a-z0-9_]+)`", DOC)) | set(
        re.findall(r"`([a-z0-9_]+) = ", DOC))
    assert named and named <= set(SETTINGS_BY_NAME), named - set(SETTINGS_BY_NAME)
