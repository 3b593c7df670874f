"""Who is asking: the session cookie (staff, patient, share visitor) or a staff API token.

Resolution hits the database at most once a second per credential (an in-process cache
keyed by the credential's hash). Revoking a share, a session or a token moves the change
marker (models/changes.py), and every process drops this cache when it sees it move
(server/changes.py, every change_poll_ms): the change takes effect on every node within a
fraction of a second. Share expiry is checked exactly on every request.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time

from models.clock import utcnow
from models.db import connection
from models.sessions import load_api_token, load_session
from models.shares import share_or_none
from models.staff import staff_user_or_none

from .policy import Principal

COOKIE = "cf_session"
KEEP_COOKIE = "cf_keep"        # the browser's other patient and share sessions, '.'-joined
MAX_KEPT = 8
# How long a resolved cookie or token is trusted without asking the database again (never
# past the session's expiry, idle limit or the share's expiry). Every change that ends
# access (a session ended, a share revoked, an account locked, a token revoked) is announced
# through the change marker and empties this cache on every node within change_poll_ms
# (server/changes.py), so the lifetime only bounds a change the marker missed. Was 1 s: a
# session row and a share row read for nearly every frame (issue 17's profile: 88% of the
# database time of a process under 500 phones).
CACHE_TTL_S = 15.0
# A credential that resolves to nothing never comes back (sessions and tokens only end), so
# a browser still sending an ended session in cf_keep costs no lookup per request.
DEAD_TTL_S = 300.0


def _roles(user) -> frozenset:
    return frozenset(r for r in (user.roles or "").split(",") if r)


def principal_from_session(s) -> Principal | None:
    if s.kind == "staff":
        u = staff_user_or_none(s.staff_user_id)
        if u is None or not u.active:
            return None
        return Principal("staff", u.username, _roles(u), session_id=s.id,
                         csrf_token=s.csrf_token, staff_user_id=u.id,
                         must_change_password=bool(u.must_change_password),
                         verified_at=s.verified_at)
    if s.kind == "patient":
        return Principal("patient", str(s.patient_id), session_id=s.id,
                         csrf_token=s.csrf_token, patient_db_id=s.patient_id,
                         verified_at=s.verified_at)
    if s.kind == "share":
        sh = share_or_none(s.share_id)
        if sh is None or sh.revoked_at is not None:
            return None
        return Principal("share", str(sh.id), session_id=s.id, csrf_token=s.csrf_token,
                         share_id=sh.id, share_exam_id=sh.exam_id,
                         share_include_images=bool(sh.include_images),
                         share_allow_download=bool(sh.allow_download),
                         share_expires_at=sh.expires_at, verified_at=s.verified_at)
    return None


class PrincipalResolver:
    def __init__(self, password_max_age_days=None):
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()
        self._epoch = 0
        # () -> the policy's password age limit: a token of an account whose password has
        # expired is blocked like its sign-in (it must change the password first)
        self.password_max_age_days = password_max_age_days

    def _token_must_change(self, user) -> bool:
        if user.must_change_password:
            return True
        if user.service_account or self.password_max_age_days is None:
            return False                    # a service account has no password to age
        from models.security import password_expired
        return password_expired(user, int(self.password_max_age_days()))

    def cached(self, credential: str) -> tuple[bool, Principal | None]:
        key = hashlib.sha256(credential.encode()).hexdigest()
        hit = self._cache.get(key)
        if hit and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    def resolve(self, credential: str, bearer: bool) -> Principal | None:
        """Database lookup (blocking: run it in the db pool)."""
        epoch = self._epoch
        with connection():
            ends: list = []                   # UTC times after which p must not be used
            if bearer:
                t = load_api_token(credential)
                p = None
                if t is not None:
                    ends.append(getattr(t, "expires_at", None))
                    u = t.staff_user
                    # a token skips nothing its owner could not: a required password
                    # change (or an expired password) blocks it as it blocks a sign-in
                    p = Principal("staff", u.username, _roles(u), via_token=True,
                                  staff_user_id=u.id,
                                  must_change_password=self._token_must_change(u))
            else:
                s = load_session(credential)
                p = principal_from_session(s) if s is not None else None
                if p is not None:
                    ends += [s.expires_at, p.share_expires_at,
                             s.last_seen_at + dt.timedelta(seconds=s.idle_timeout_s)]
        key = hashlib.sha256(credential.encode()).hexdigest()
        with self._lock:
            if epoch != self._epoch:
                return p       # read before a clear (a change): not kept, may be stale
            if len(self._cache) > 50_000:
                self._cache.clear()
            ttl = CACHE_TTL_S if p is not None else DEAD_TTL_S
            if p is not None:
                now = utcnow()
                for end in ends:
                    if end is not None:
                        ttl = min(ttl, max(0.0, (end - now).total_seconds()))
            self._cache[key] = (time.monotonic() + ttl, p)
        return p

    def forget(self, credential: str) -> None:
        key = hashlib.sha256(credential.encode()).hexdigest()
        with self._lock:
            self._cache.pop(key, None)

    def clear(self) -> None:
        """Forget every credential (a change to sessions, shares, accounts or tokens; here or,
        through the change marker, on another node: server/changes.py). A lookup already
        under way does not put back what it read before the clear."""
        with self._lock:
            self._epoch += 1
            self._cache.clear()
