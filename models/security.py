"""Strong authentication and data integrity records (等保 2.0 level 3).

- Password history: the hashes of earlier passwords, so a new one may not repeat the last N.
- TOTP second factor (RFC 6238, pyotp): one secret per staff account, stored masked with a
  key derived from the server's secret key (a copy of the database alone does not give the
  codes), with replay protection (a code's time step is accepted once).
- Recovery codes: ten single-use codes, shown once at enrolment, stored as scrypt hashes.
- Integrity findings: an original file whose SHA-256 no longer matches the database (or that
  is missing), found on read or by the scheduled scrub; shown to admins until resolved.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets

import peewee as pw
import pyotp

from .accounts import hash_password, verify_password
from .db import write_transaction
from .schema import BaseModel, StaffUser, utcnow

RECOVERY_CODES = 10
TOTP_ISSUER = "CloudFilm 云胶片"
TOTP_VALID_WINDOW = 1          # accept the previous and next 30-second step (clock drift)


class PasswordHistory(BaseModel):
    staff_user = pw.ForeignKeyField(StaffUser, backref="password_history", on_delete="CASCADE")
    password_hash = pw.CharField(max_length=255)
    created_at = pw.DateTimeField(default=utcnow)


class TotpCredential(BaseModel):
    staff_user = pw.ForeignKeyField(StaffUser, unique=True, on_delete="CASCADE")
    secret_masked = pw.CharField(max_length=128)     # base64(secret XOR keystream)
    nonce = pw.CharField(max_length=32)
    confirmed_at = pw.DateTimeField(null=True)       # None: enrolment not finished
    last_step = pw.BigIntegerField(default=0)        # last accepted time step (no replay)
    created_at = pw.DateTimeField(default=utcnow)


class RecoveryCode(BaseModel):
    staff_user = pw.ForeignKeyField(StaffUser, backref="recovery_codes", on_delete="CASCADE")
    code_hash = pw.CharField(max_length=255)
    used_at = pw.DateTimeField(null=True)
    created_at = pw.DateTimeField(default=utcnow)


class IntegrityFinding(BaseModel):
    kind = pw.CharField(max_length=16)               # instance / report
    object_id = pw.CharField(max_length=128)         # SOP Instance UID / report id
    file_path = pw.CharField(max_length=255)         # relative to data_dir
    expected_sha256 = pw.CharField(max_length=64)
    actual_sha256 = pw.CharField(max_length=64, default="")   # "" = file missing
    source = pw.CharField(max_length=16)             # read / scrub
    found_at = pw.DateTimeField(default=utcnow)
    resolved_at = pw.DateTimeField(null=True)
    resolved_by = pw.CharField(max_length=64, default="")

    class Meta:
        indexes = ((("kind", "object_id", "resolved_at"), False),)


SECURITY_MODELS = [PasswordHistory, TotpCredential, RecoveryCode, IntegrityFinding]


# passwords ---------------------------------------------------------------------------------
def password_reused(user: StaffUser, password: str, history: int) -> bool:
    """True if password equals the current one or one of the `history` - 1 before it."""
    if history <= 0:
        return False
    if verify_password(password, user.password_hash):
        return True
    rows = (PasswordHistory.select().where(PasswordHistory.staff_user == user)
            .order_by(PasswordHistory.id.desc()).limit(max(0, history - 1)))
    return any(verify_password(password, r.password_hash) for r in rows)


def remember_password(user: StaffUser, old_hash: str, keep: int = 24) -> None:
    """Store the outgoing password hash (call inside the change's transaction)."""
    PasswordHistory.create(staff_user=user, password_hash=old_hash)
    stale = [r.id for r in PasswordHistory.select(PasswordHistory.id)
             .where(PasswordHistory.staff_user == user)
             .order_by(PasswordHistory.id.desc()).offset(keep)]
    if stale:
        PasswordHistory.delete().where(PasswordHistory.id.in_(stale)).execute()


# attempts at a staff account's secrets (password, current password, TOTP, recovery code) ----
def reserve_attempt(user_id: int, *, max_failures: int, now: dt.datetime | None = None) -> bool:
    """Reserve one attempt at an account's secret BEFORE the secret is compared: one
    conditional UPDATE counts it as a failure (failed_logins + 1) only while fewer than
    max_failures are counted and the account is not locked. However many requests race (one
    row, one UPDATE each: SQLite and MariaDB serialise them), at most max_failures succeed
    per lock. False: compare nothing (locked, or max_failures attempts counted or in flight).
    Commit before comparing (call in its own short write transaction)."""
    now = now or utcnow()
    return bool(StaffUser.update(failed_logins=StaffUser.failed_logins + 1).where(
        (StaffUser.id == user_id) & (StaffUser.failed_logins < max_failures)
        & (StaffUser.locked_until.is_null() | (StaffUser.locked_until <= now))).execute())


def release_attempt(user_id: int) -> None:
    """The reserved attempt was the right secret: it does not count as a failure."""
    StaffUser.update(failed_logins=StaffUser.failed_logins - 1).where(
        (StaffUser.id == user_id) & (StaffUser.failed_logins > 0)).execute()


def lock_if_exhausted(user_id: int, *, max_failures: int, lock_minutes: int,
                      now: dt.datetime | None = None) -> bool:
    """After a wrong secret or a refused reservation: lock the account for lock_minutes when
    max_failures attempts are counted and it is not locked yet (the count starts again).
    True for the one call that locked it (it audits `account.locked`)."""
    now = now or utcnow()
    return bool(StaffUser.update(failed_logins=0,
                                 locked_until=now + dt.timedelta(minutes=lock_minutes)).where(
        (StaffUser.id == user_id) & (StaffUser.failed_logins >= max_failures)
        & (StaffUser.locked_until.is_null() | (StaffUser.locked_until <= now))).execute())


UNKNOWN_USER_DETAIL = "unknown or disabled user"


def unknown_user_failures(username: str) -> tuple[int, dt.datetime | None]:
    """For a user name that is no account (or a disabled one): the failed sign-ins audited
    since its last `account.locked` record, and that record's time. Such a name locks like an
    account (server/signin.py), so the lock-out does not tell which names exist."""
    from .schema import AuditEvent
    name = username[:64]
    last = (AuditEvent.select(AuditEvent.id, AuditEvent.time)
            .where((AuditEvent.action == "account.locked")
                   & (AuditEvent.object_type == "staff_user") & (AuditEvent.object_id == name))
            .order_by(AuditEvent.id.desc()).first())
    fails = AuditEvent.select().where(
        (AuditEvent.id > (last.id if last else 0)) & (AuditEvent.action == "login")
        & (AuditEvent.actor_id == name) & (AuditEvent.outcome == "fail")
        & (AuditEvent.detail == UNKNOWN_USER_DETAIL)).count()
    return fails, (last.time if last else None)


def password_expired(user: StaffUser, max_age_days: int, now: dt.datetime | None = None) -> bool:
    if max_age_days <= 0 or user.password_changed_at is None:
        return False
    return (now or utcnow()) - user.password_changed_at > dt.timedelta(days=max_age_days)


# TOTP --------------------------------------------------------------------------------------
def _keystream(key: bytes, user_id: int, nonce: str, n: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < n:
        out += hmac.new(key, f"totp|{user_id}|{nonce}|{counter}".encode(),
                        hashlib.sha256).digest()
        counter += 1
    return out[:n]


def _mask(key: bytes, user_id: int, nonce: str, secret_b32: str) -> str:
    raw = secret_b32.encode()
    ks = _keystream(key, user_id, nonce, len(raw))
    return base64.b64encode(bytes(a ^ b for a, b in zip(raw, ks))).decode()


def _unmask(key: bytes, cred: TotpCredential) -> str:
    raw = base64.b64decode(cred.secret_masked)
    ks = _keystream(key, cred.staff_user_id, cred.nonce, len(raw))
    return bytes(a ^ b for a, b in zip(raw, ks)).decode()


def totp_enabled(user: StaffUser) -> bool:
    return TotpCredential.select().where((TotpCredential.staff_user == user)
                                         & TotpCredential.confirmed_at.is_null(False)).exists()


def begin_enrolment(user: StaffUser, key: bytes) -> tuple[str, str]:
    """A new (unconfirmed) secret for user. Returns (base32 secret, otpauth:// URI).

    An already confirmed credential is not replaced here: disable it first."""
    secret = pyotp.random_base32(32)
    nonce = secrets.token_hex(8)
    with write_transaction():
        cred = TotpCredential.get_or_none(TotpCredential.staff_user == user)
        if cred is not None and cred.confirmed_at is not None:
            raise ValueError("two-factor sign-in is already enabled")
        if cred is not None:
            cred.delete_instance()
        TotpCredential.create(staff_user=user, nonce=nonce,
                              secret_masked=_mask(key, user.id, nonce, secret))
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=TOTP_ISSUER)
    return secret, uri


def _check_code(key: bytes, cred: TotpCredential, code: str, now: dt.datetime | None) -> int:
    """The time step the code matches (> last accepted step), or 0."""
    code = "".join(c for c in str(code) if c.isdigit())
    if len(code) != 6:
        return 0
    totp = pyotp.TOTP(_unmask(key, cred))
    t = (now or dt.datetime.now(dt.timezone.utc))
    ts = int(t.replace(tzinfo=dt.timezone.utc).timestamp()) if t.tzinfo is None \
        else int(t.timestamp())
    step_now = ts // totp.interval
    for delta in range(-TOTP_VALID_WINDOW, TOTP_VALID_WINDOW + 1):
        step = step_now + delta
        if step > cred.last_step and hmac.compare_digest(totp.at(step * totp.interval), code):
            return step
    return 0


def confirm_enrolment(user: StaffUser, key: bytes, code: str,
                      now: dt.datetime | None = None) -> list[str] | None:
    """Finish enrolment with a first code. Returns the new recovery codes (shown once), or
    None when the code is wrong. Call inside the action's transaction."""
    cred = TotpCredential.get_or_none(TotpCredential.staff_user == user)
    if cred is None or cred.confirmed_at is not None:
        return None
    step = _check_code(key, cred, code, now)
    if not step:
        return None
    TotpCredential.update(confirmed_at=utcnow(), last_step=step).where(
        TotpCredential.id == cred.id).execute()
    return new_recovery_codes(user)


def verify_totp(user: StaffUser, key: bytes, code: str, now: dt.datetime | None = None) -> bool:
    """Check a sign-in code of an enrolled user; each code is accepted once."""
    cred = TotpCredential.get_or_none((TotpCredential.staff_user == user)
                                      & TotpCredential.confirmed_at.is_null(False))
    if cred is None:
        return False
    step = _check_code(key, cred, code, now)
    if not step:
        return False
    # Compare-and-set, so two requests racing with one code cannot both pass.
    return bool(TotpCredential.update(last_step=step).where(
        (TotpCredential.id == cred.id) & (TotpCredential.last_step < step)).execute())


def _normalise_recovery(code: str) -> str:
    return "".join(c for c in str(code).lower() if c.isalnum())


def new_recovery_codes(user: StaffUser) -> list[str]:
    """Replace user's recovery codes with RECOVERY_CODES fresh ones (returned once)."""
    RecoveryCode.delete().where(RecoveryCode.staff_user == user).execute()
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(alphabet) for _ in range(10))
        codes.append(f"{raw[:5]}-{raw[5:]}")
        RecoveryCode.create(staff_user=user, code_hash=hash_password(raw))
    return codes


def use_recovery_code(user: StaffUser, code: str) -> bool:
    """Spend one recovery code; True if it was valid and unused."""
    norm = _normalise_recovery(code)
    if len(norm) != 10:
        return False
    for rc in RecoveryCode.select().where((RecoveryCode.staff_user == user)
                                          & RecoveryCode.used_at.is_null()):
        if verify_password(norm, rc.code_hash):
            return bool(RecoveryCode.update(used_at=utcnow()).where(
                (RecoveryCode.id == rc.id) & RecoveryCode.used_at.is_null()).execute())
    return False


def recovery_codes_left(user: StaffUser) -> int:
    return RecoveryCode.select().where((RecoveryCode.staff_user == user)
                                       & RecoveryCode.used_at.is_null()).count()


def disable_totp(user: StaffUser) -> bool:
    n = TotpCredential.delete().where(TotpCredential.staff_user == user).execute()
    RecoveryCode.delete().where(RecoveryCode.staff_user == user).execute()
    return bool(n)


# integrity ---------------------------------------------------------------------------------
def record_finding(kind: str, object_id: str, file_path: str, expected: str, actual: str,
                   source: str) -> tuple[IntegrityFinding, bool]:
    """Record a mismatch once (an open finding for the same object is reused).
    Returns (finding, created)."""
    open_ = IntegrityFinding.get_or_none((IntegrityFinding.kind == kind)
                                         & (IntegrityFinding.object_id == object_id)
                                         & IntegrityFinding.resolved_at.is_null())
    if open_ is not None:
        return open_, False
    return IntegrityFinding.create(kind=kind, object_id=object_id[:128],
                                   file_path=file_path[:255], expected_sha256=expected,
                                   actual_sha256=actual, source=source), True


def open_findings(limit: int = 500) -> list[IntegrityFinding]:
    return list(IntegrityFinding.select().where(IntegrityFinding.resolved_at.is_null())
                .order_by(IntegrityFinding.id.desc()).limit(limit))


def resolve_finding(finding_id: int, by: str) -> bool:
    return bool(IntegrityFinding.update(resolved_at=utcnow(), resolved_by=by[:64]).where(
        (IntegrityFinding.id == finding_id) & IntegrityFinding.resolved_at.is_null()).execute())
