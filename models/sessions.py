"""Server-side sessions and staff API tokens. Only SHA-256 hashes of secrets are stored."""
from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from .changes import announce
from .db import write_transaction
from .schema import ApiToken, Patient, Session, Share, StaffUser, utcnow

SESSION_BYTES = 32


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class NewSession:
    token: str            # goes to the cookie, never stored
    session: Session


def create_session(kind: str, *, staff_user: StaffUser | None = None,
                   patient: Patient | None = None, share: Share | None = None,
                   idle_timeout_s: int = 1800, lifetime_s: int = 12 * 3600, ip: str = "",
                   user_agent: str = "", verified: bool = False) -> NewSession:
    if kind not in ("staff", "patient", "share"):
        raise ValueError(kind)
    token = secrets.token_urlsafe(SESSION_BYTES)
    now = utcnow()
    s = Session.create(token_hash=token_hash(token), kind=kind, staff_user=staff_user,
                       patient=patient, share=share, csrf_token=secrets.token_urlsafe(24),
                       created_at=now, last_seen_at=now, idle_timeout_s=idle_timeout_s,
                       expires_at=now + dt.timedelta(seconds=lifetime_s),
                       verified_at=now if verified else None, ip=ip[:64],
                       user_agent=user_agent[:255])
    return NewSession(token, s)


def load_session(token: str, *, touch_every_s: int = 60) -> Session | None:
    """The live session for a cookie value, or None (unknown, ended, idle or expired)."""
    if not token or len(token) > 128:
        return None
    s = Session.get_or_none(Session.token_hash == token_hash(token))
    if s is None or s.ended_at is not None:
        return None
    now = utcnow()
    if now >= s.expires_at or (now - s.last_seen_at).total_seconds() > s.idle_timeout_s:
        return None
    if (now - s.last_seen_at).total_seconds() >= touch_every_s:
        Session.update(last_seen_at=now).where(Session.id == s.id).execute()
        s.last_seen_at = now
    return s


# Ending sessions is announced (models/changes.py): every node stops honouring them within a
# second, not when its cache of the cookie runs out.
def end_session(session: Session) -> None:
    Session.update(ended_at=utcnow()).where(Session.id == session.id).execute()
    announce()


def end_sessions(tokens) -> int:
    """End the live sessions behind these cookie values (unknown ones are ignored)."""
    hashes = [token_hash(t) for t in tokens if t and len(t) <= 128]
    if not hashes:
        return 0
    n = Session.update(ended_at=utcnow()).where(
        Session.token_hash.in_(hashes) & Session.ended_at.is_null()).execute()
    if n:
        announce()
    return n


def end_sessions_of_share(share: Share) -> int:
    n = Session.update(ended_at=utcnow()).where(
        (Session.share == share) & Session.ended_at.is_null()).execute()
    announce()                 # the share itself changed too (revoked)
    return n


def end_sessions_of_user(user: StaffUser) -> int:
    n = Session.update(ended_at=utcnow()).where(
        (Session.staff_user == user) & Session.ended_at.is_null()).execute()
    announce()                 # the account itself changed too (roles, deactivated, password)
    return n


def mark_verified(session: Session) -> None:
    now = utcnow()
    Session.update(verified_at=now).where(Session.id == session.id).execute()
    session.verified_at = now


# API tokens --------------------------------------------------------------------------------
TOKEN_PREFIX = "cft_"


def create_api_token(user: StaffUser, *, name: str = "", days: int = 90) -> str:
    from .accounts import ADMIN_ROLES, roles_of_user
    if roles_of_user(user) & ADMIN_ROLES:
        raise ValueError("admin accounts cannot hold API tokens")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with write_transaction():
        ApiToken.create(staff_user=user, token_hash=token_hash(token), name=name[:64],
                        expires_at=utcnow() + dt.timedelta(days=days))
    return token


def load_api_token(token: str) -> ApiToken | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        return None
    t = (ApiToken.select(ApiToken, StaffUser).join(StaffUser)
         .where(ApiToken.token_hash == token_hash(token)).first())
    if t is None or t.revoked_at is not None or utcnow() >= t.expires_at:
        return None
    if not t.staff_user.active:
        return None
    from .accounts import ADMIN_ROLES, roles_of_user
    if roles_of_user(t.staff_user) & ADMIN_ROLES:
        return None        # issued before admin accounts were refused tokens: never usable
    return t
