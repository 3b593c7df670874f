"""Stored run-time settings under one prefix: the security policy's rows (security.NAME,
lists stored as JSON arrays) become conf.NAME with comma-separated text, like every other
run-time setting (server/settings.py). Idempotent: a row already moved is left alone."""
import json

from ..schema import RuntimeSetting


def up(db):
    for row in list(RuntimeSetting.select().where(RuntimeSetting.key.startswith("security."))):
        new_key = "conf." + row.key[len("security."):]
        try:
            value = json.loads(row.value)
        except ValueError:
            value = None
        if isinstance(value, list):
            value = ",".join(str(x) for x in value)
        if value is not None and RuntimeSetting.get_or_none(RuntimeSetting.key == new_key) is None:
            RuntimeSetting.create(key=new_key, value=json.dumps(value, ensure_ascii=False),
                                  updated_at=row.updated_at, updated_by=row.updated_by)
        RuntimeSetting.delete().where(RuntimeSetting.id == row.id).execute()


def down(db):
    names = ("password_min_length", "password_min_classes", "password_history",
             "password_max_age_days", "lockout_failures", "lockout_minutes",
             "session_idle_minutes", "session_absolute_hours", "totp_required_roles",
             "admin_allow_list")
    for row in list(RuntimeSetting.select().where(
            RuntimeSetting.key.in_(["conf." + n for n in names]))):
        value = json.loads(row.value)
        if row.key.endswith(("totp_required_roles", "admin_allow_list")):
            value = [x for x in str(value).split(",") if x]
        RuntimeSetting.update(key="security." + row.key[len("conf."):],
                              value=json.dumps(value, ensure_ascii=False)).where(
            RuntimeSetting.id == row.id).execute()
