"""Sign-in: the use cases that start and end sessions, and their transactions.

Every function here blocks (database, scrypt): handlers call them in the db pool with
``await self.in_db(signin.xxx, self.ctx, ...)``, map the result, set the cookie
(server/handlers/auth.py ``adopt_session``) and answer. Refusals are ``SignInRefused``
(a DomainError: status + bilingual message, mapped by the base handler) or, for the staff
steps, a ``SignInResult`` whose ``refusal()`` is raised by the handler.

Staff (two steps when a second factor is needed):
  ``password_step`` → "ok" (session) | "second-factor" (signed ticket, 5 minutes) | "bad" |
  "locked" | "network";  ``code_step`` (TOTP or recovery code) and ``confirm_enrolment``
  finish it. Wrong passwords and wrong codes (and the current password on a change) count
  on ONE counter (``check_secret``: an attempt is reserved atomically BEFORE the secret is
  compared; lock after the policy's lockout_failures); ``start_staff_session`` is the one
  staff session start (the browser's previous session ends, a new ID is issued: no fixation).
Patients and shares: ``verify_patient`` (identity data), ``open_patient_qr``, ``open_share``,
  the WeChat sign-ins (``wechat_visit``, ``wechat_bind``, ``wechat_switch``);
  ``start_patient_session`` is the one patient session start outside a counted open (the
  opens of a share or patient QR create their session in the transaction that counts the
  open: models/shares.py).
Sign-out: ``sign_out`` ends sessions (and audits a staff/patient logout when asked).
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from models import shares as access
from models import wechat as store
from models.accounts import (PasswordPolicyError, check_password_strength,
                             hash_password, verify_password)
from models.clock import utcnow
from models.db import write_transaction
from models.errors import DomainError
from models.security import confirm_enrolment as confirm_totp
from models.security import (UNKNOWN_USER_DETAIL, lock_if_exhausted, password_expired,
                             password_reused, recovery_codes_left, release_attempt,
                             remember_password, reserve_attempt, totp_enabled,
                             unknown_user_failures, use_recovery_code, verify_totp)
from models.sessions import NewSession, create_session, end_session, end_sessions, load_session
from models.staff import (clear_sign_in_failures, ip_in_networks, require_password_change,
                          set_password_hash, staff_user_by_id, staff_user_named,
                          staff_user_or_none)

from .policy import ADMIN_ROLES

TICKET_TTL_S = 300

# An unknown user name costs the same scrypt work as a known one (no user enumeration).
_DUMMY_HASH = hash_password("timing-equaliser-Aa1!")

MSG_MISSING = "请输入用户名和密码 / enter your user name and password"
MSG_BAD_PASSWORD = "用户名或密码错误 / wrong user name or password"
MSG_NETWORK = ("管理员账号不能从此网络地址登录（管理网络白名单） / admin accounts cannot sign in "
               "from this address (admin allow-list)")
MSG_NO_CODE = "请输入验证码 / enter the code from your authenticator app"
MSG_WRONG_CODE = "验证码错误 / wrong code"
MSG_TICKET = "登录步骤已过期，请重新输入密码 / the sign-in step expired; enter your password again"
MSG_ACCOUNT_LOCKED = "账号已锁定，请稍后再试 / the account is locked; try again later"


class SignInRefused(DomainError):
    """A refused sign-in step: the status and the bilingual message the client reads."""
    status = 401


def _policy(ctx) -> dict:
    """The security policy in force: the one place sign-in reads it."""
    from . import settings
    return settings.policy(ctx)


def _roles(user) -> set[str]:
    return {r for r in (user.roles or "").split(",") if r}


@dataclass
class SignInResult:
    """The answer of a staff sign-in step."""
    outcome: str                        # ok | second-factor | bad | locked | network
    step: str = "password"              # password | code: which step answered
    user: Any = None
    session: NewSession | None = None   # ok: the new session (None: a signed-in user
    #                                     confirmed an enrolment, no new session)
    second_factor: str | None = None    # second-factor: "totp" | "enrol"
    ticket: str | None = None           # second-factor: for the next step
    extra: dict = field(default_factory=dict)    # recovery_codes / recovery_codes_left
    lockout_failures: int = 0
    lockout_minutes: int = 0

    def refusal(self) -> SignInRefused | None:
        """The error to answer with, or None for "ok" and "second-factor"."""
        minutes = self.lockout_minutes
        if self.outcome == "network":
            return SignInRefused(MSG_NETWORK, status=403)
        if self.outcome == "locked" and self.step == "password":
            return SignInRefused(f"连续 {self.lockout_failures} 次密码错误，账号已锁定 {minutes} 分钟 / "
                                 f"too many failed sign-ins: the account is locked for "
                                 f"{minutes} minutes", status=423)
        if self.outcome == "locked":
            return SignInRefused(f"验证码错误次数过多，账号已锁定 {minutes} 分钟 / too many wrong "
                                 f"codes: the account is locked for {minutes} minutes",
                                 status=423)
        if self.outcome == "bad":
            return SignInRefused(MSG_BAD_PASSWORD if self.step == "password"
                                 else MSG_WRONG_CODE, status=401)
        return None


def _result(pol: dict, outcome: str, **kw) -> SignInResult:
    return SignInResult(outcome, lockout_failures=int(pol["lockout_failures"]),
                        lockout_minutes=int(pol["lockout_minutes"]), **kw)


# tickets: the signed proof that the password step passed ---------------------------------------
def _ticket_key(ctx) -> bytes:
    return hmac.new(ctx.secret_key, b"cloudfilm 2fa ticket v1", hashlib.sha256).digest()


def make_ticket(ctx, user, purpose: str) -> str:
    """A ticket for the second step: names the account and the step, lasts TICKET_TTL_S and
    stops working when the password changes."""
    body = f"{user.id}.{purpose}.{int(time.time()) + TICKET_TTL_S}.{secrets.token_hex(8)}." \
           f"{user.password_hash[-12:]}"
    sig = hmac.new(_ticket_key(ctx), body.encode(), hashlib.sha256).hexdigest()[:32]
    payload = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
    return f"{payload}.{sig}"


def read_ticket(ctx, ticket: str, purposes: tuple[str, ...]):
    """The account a valid ticket names. Raises SignInRefused (401 expired or forged, 423 the
    account locked meanwhile)."""
    bad = SignInRefused(MSG_TICKET, status=401)
    try:
        payload, sig = str(ticket).rsplit(".", 1)
        body = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
        uid, purpose, exp, _nonce, pw_tail = body.split(".", 4)
        expires = int(exp)
        user_id = int(uid)
    except ValueError:          # UnicodeDecodeError and binascii.Error are ValueErrors
        raise bad from None
    want = hmac.new(_ticket_key(ctx), body.encode(), hashlib.sha256).hexdigest()[:32]
    if not hmac.compare_digest(want, sig) or purpose not in purposes or expires < time.time():
        raise bad
    user = staff_user_or_none(user_id)
    if user is None or not user.active or user.password_hash[-12:] != pw_tail:
        raise bad
    if user.locked_until and user.locked_until > utcnow():
        raise SignInRefused(MSG_ACCOUNT_LOCKED, status=423)
    return user


# staff ------------------------------------------------------------------------------------------
def _audit_attempt(ctx, user, pol: dict, *, ip: str, name: str, action: str, outcome: str,
                   detail: str) -> bool:
    """One write transaction: lock at lockout_failures, audit this attempt, and audit
    `account.locked` once. The account row is written before the audit chain's head, the
    order of every sign-in transaction (start_staff_session too), so concurrent ones queue
    on MariaDB instead of deadlocking."""
    failures = int(pol["lockout_failures"])
    with write_transaction():
        locked = lock_if_exhausted(user.id, max_failures=failures,
                                   lock_minutes=int(pol["lockout_minutes"]))
        ctx.auditor.record(action, actor_kind="staff", actor_id=name, ip=ip, outcome=outcome,
                           detail=detail)
        if locked:
            ctx.auditor.record("account.locked", actor_kind="system", ip=ip,
                               object_type="staff_user", object_id=name, outcome="ok",
                               detail=f"{failures} failed sign-ins")
    return locked


def check_secret(ctx, user, pol: dict, compare, *, ip: str, what: str = "password",
                 action: str | None = None, name: str | None = None, dummy=None) -> str:
    """The one lock-out rule for every secret of a staff account (password, the current
    password on a change, TOTP code, recovery code): ONE counter. An attempt is reserved on
    the account (one conditional UPDATE, committed) BEFORE `compare()` runs, so however many
    requests race, at most lockout_failures secrets are compared before the account locks
    for lockout_minutes (audited `account.locked`). A refused reservation compares nothing
    (`dummy()` does the same work instead) and is audited as refused; a wrong secret is
    audited as `action` (default `login` / `login.second_factor`) with outcome fail.
    Returns "ok" (the reservation released), "bad" or "locked"."""
    name = name or user.username
    action = action or ("login" if what == "password" else "login.second_factor")
    with write_transaction():
        reserved = reserve_attempt(user.id, max_failures=int(pol["lockout_failures"]))
    if not reserved:
        if dummy is not None:
            dummy()
        _audit_attempt(ctx, user, pol, ip=ip, name=name, action=action, outcome="refused",
                       detail="account locked")
        return "locked"
    if compare():
        with write_transaction():
            release_attempt(user.id)
        return "ok"
    locked = _audit_attempt(ctx, user, pol, ip=ip, name=name, action=action, outcome="fail",
                            detail=f"wrong {what}")
    return "locked" if locked else "bad"


def start_staff_session(ctx, user, pol: dict | None = None, *, old: str | None = None,
                        ip: str = "", user_agent: str = "", how: str = "",
                        name: str | None = None) -> NewSession:
    """The one staff session start, after the last factor: the browser's previous session
    (`old`, its cookie value) ends, the failure count clears, a new session ID is issued and
    the sign-in is audited (`login` ok, detail: how the last step was passed)."""
    pol = pol or _policy(ctx)
    with write_transaction():
        if old:
            s = load_session(old)
            if s is not None:
                end_session(s)
        clear_sign_in_failures(user.id)
        new = create_session("staff", staff_user=user,
                             idle_timeout_s=int(pol["session_idle_minutes"]) * 60,
                             lifetime_s=int(pol["session_absolute_hours"]) * 3600, ip=ip,
                             user_agent=user_agent[:255], verified=True)
        ctx.auditor.record("login", actor_kind="staff", actor_id=name or user.username, ip=ip,
                           outcome="ok", detail=how)
    return new


def _audit_login(ctx, username: str, ip: str, outcome: str, detail: str) -> None:
    ctx.auditor.record("login", actor_kind="staff", actor_id=username, ip=ip, outcome=outcome,
                       detail=detail)


def _second_factor_needed(ctx, user, pol: dict, ip: str) -> str | None:
    """After a correct password: applies password expiry (the account must change its
    password) and says which second-factor step is needed, if any."""
    max_age = int(pol["password_max_age_days"])
    if not user.must_change_password and password_expired(user, max_age):
        with write_transaction():
            require_password_change(user.id)
            ctx.auditor.record("password.expired", actor_kind="system", ip=ip,
                               object_type="staff_user", object_id=user.username,
                               detail=f"older than {pol['password_max_age_days']} days")
        user.must_change_password = True
    if totp_enabled(user):
        return "totp"
    if _roles(user) & set(pol.get("totp_required_roles") or ()):
        return "enrol"
    return None


def _unknown_user(ctx, pol: dict, username: str, password: str, ip: str) -> str:
    """A user name that is no (enabled) account: the same work (one scrypt of a dummy hash),
    the same answers and the same lock-out as an account ("bad" until lockout_failures, then
    "locked" for lockout_minutes), so no answer tells which names exist. Counted from the
    audit trail; nothing secret is compared."""
    verify_password(password, _DUMMY_HASH)
    limit, minutes = int(pol["lockout_failures"]), int(pol["lockout_minutes"])
    with write_transaction():
        fails, locked_at = unknown_user_failures(username)
        if locked_at is not None and locked_at + dt.timedelta(minutes=minutes) > utcnow():
            _audit_login(ctx, username, ip, "refused", "account locked")
            return "locked"
        _audit_login(ctx, username, ip, "fail", UNKNOWN_USER_DETAIL)
        if fails + 1 < limit:
            return "bad"
        ctx.auditor.record("account.locked", actor_kind="system", ip=ip,
                           object_type="staff_user", object_id=username, outcome="ok",
                           detail=f"{limit} failed sign-ins (no such account)")
    return "locked"


def password_step(ctx, username: str, password: str, *, ip: str = "", user_agent: str = "",
                  old: str | None = None) -> SignInResult:
    """Sign-in with user name and password: a session, or the ticket of the second step."""
    if not username or not password:
        raise SignInRefused(MSG_MISSING, status=400)
    pol = _policy(ctx)
    user = staff_user_named(username)
    if user is None or not user.active or user.service_account:
        # a service account has no password: it is answered like an unknown account
        return _result(pol, _unknown_user(ctx, pol, username, password, ip))
    outcome = check_secret(ctx, user, pol, lambda: verify_password(password, user.password_hash),
                           ip=ip, name=username,
                           dummy=lambda: verify_password(password, _DUMMY_HASH))
    if outcome != "ok":
        return _result(pol, outcome)
    if _roles(user) & ADMIN_ROLES and not ip_in_networks(ip, pol["admin_allow_list"]):
        _audit_login(ctx, username, ip, "refused", "address not on the admin allow-list")
        return _result(pol, "network")
    step = _second_factor_needed(ctx, user, pol, ip)
    if step:
        return _result(pol, "second-factor", user=user, second_factor=step,
                       ticket=make_ticket(ctx, user, step))
    new = start_staff_session(ctx, user, pol, old=old, ip=ip, user_agent=user_agent,
                              name=username)
    return _result(pol, "ok", user=user, session=new)


def code_step(ctx, ticket: str, *, code: str = "", recovery_code: str = "", ip: str = "",
              user_agent: str = "", old: str | None = None) -> SignInResult:
    """The second step: a code from the authenticator app or a recovery code."""
    if not code and not recovery_code:
        raise SignInRefused(MSG_NO_CODE, status=400)
    pol = _policy(ctx)
    user = read_ticket(ctx, ticket, ("totp",))
    outcome = check_secret(ctx, user, pol,
                           lambda: verify_totp(user, ctx.secret_key, code) if code else
                           use_recovery_code(user, recovery_code),
                           ip=ip, what="TOTP code" if code else "recovery code")
    if outcome != "ok":
        return _result(pol, outcome, step="code")
    extra = {"recovery_codes_left": recovery_codes_left(user)} if recovery_code else {}
    new = start_staff_session(ctx, user, pol, old=old, ip=ip, user_agent=user_agent,
                              how="totp" if code else "recovery code")
    return _result(pol, "ok", step="code", user=user, session=new, extra=extra)


def confirm_enrolment(ctx, code: str, *, ticket: str | None = None,
                      user_id: int | None = None, ip: str = "", user_agent: str = "",
                      old: str | None = None) -> SignInResult:
    """The first code confirms a new second factor: during sign-in (`ticket`: a wrong code
    counts as a failed sign-in; success starts the session) or for the signed-in account
    `user_id` (no session change). The recovery codes are in `extra` (shown once)."""
    pol = _policy(ctx)
    user = read_ticket(ctx, ticket, ("enrol",)) if ticket else staff_user_by_id(user_id)
    codes = None

    def confirm() -> bool:
        nonlocal codes
        with write_transaction():
            codes = confirm_totp(user, ctx.secret_key, code)
            if codes is not None:
                ctx.auditor.record("totp.enrol", actor_kind="staff", actor_id=user.username,
                                   ip=ip, object_type="staff_user", object_id=user.username)
        return codes is not None
    outcome = check_secret(ctx, user, pol, confirm, ip=ip, what="TOTP code") if ticket else \
        ("ok" if confirm() else "bad")
    if outcome != "ok":
        return _result(pol, outcome, step="code")
    extra = {"recovery_codes": codes}
    if not ticket:
        return _result(pol, "ok", step="code", user=user, extra=extra)
    new = start_staff_session(ctx, user, pol, old=old, ip=ip, user_agent=user_agent,
                              how="totp enrolment")
    return _result(pol, "ok", step="code", user=user, session=new, extra=extra)


def confirm_password(ctx, user, password: str, *, ip: str = "", action: str) -> None:
    """A signed-in account confirms its password before a sensitive change (second factor
    off, new recovery codes): counted on the account's lock-out counter like a sign-in and
    audited as `action` when wrong. Raises SignInRefused (400 wrong, 423 locked)."""
    outcome = check_secret(ctx, user, _policy(ctx),
                           lambda: verify_password(password, user.password_hash),
                           ip=ip, what="password", action=action,
                           dummy=lambda: verify_password(password, _DUMMY_HASH))
    if outcome == "locked":
        raise SignInRefused(MSG_ACCOUNT_LOCKED, status=423)
    if outcome != "ok":
        raise SignInRefused("密码错误 / wrong password", status=400)


def change_password(ctx, user_id: int, old_password: str, new_password: str, *,
                    ip: str = "") -> None:
    """A signed-in account changes its own password (history and strength policy). The
    current password is a secret check like a sign-in: it counts on the account's lock-out
    counter and a wrong one is audited (`password.change`, outcome fail)."""
    pol = _policy(ctx)
    user = staff_user_by_id(user_id)
    outcome = check_secret(ctx, user, pol,
                           lambda: verify_password(old_password, user.password_hash),
                           ip=ip, what="current password", action="password.change",
                           dummy=lambda: verify_password(old_password, _DUMMY_HASH))
    if outcome == "locked":
        raise SignInRefused(MSG_ACCOUNT_LOCKED, status=423)
    if outcome != "ok":
        raise SignInRefused("原密码错误 / the current password is wrong", status=400)
    if old_password == new_password:
        raise SignInRefused("新密码不能与原密码相同 / choose a new password", status=400)
    history = pol["password_history"]
    if password_reused(user, new_password, int(history)):
        raise SignInRefused(f"不能重复使用最近 {history} 次用过的密码 / do not reuse any of your "
                            f"last {history} passwords", status=400)
    try:
        check_password_strength(new_password, username=user.username,
                                min_length=pol["password_min_length"],
                                min_classes=pol["password_min_classes"])
    except PasswordPolicyError as exc:
        raise SignInRefused(str(exc), status=400) from None
    with write_transaction():
        remember_password(user, user.password_hash)
        set_password_hash(user.id, hash_password(new_password))
        ctx.auditor.record("password.change", actor_kind="staff", actor_id=user.username,
                           ip=ip)


# sign-out ---------------------------------------------------------------------------------------
def sign_out(ctx, creds, *, actor: tuple[str, str] | None = None, ip: str = "") -> int:
    """The one session end: the live sessions behind these cookie values end; with `actor`
    (the (kind, subject) signing out) one `logout` record when one was live. Returns how
    many ended."""
    live = [s for s in (load_session(c) for c in creds if c) if s is not None]
    if not live:
        return 0
    with write_transaction():
        for s in live:
            end_session(s)
        if actor is not None:
            ctx.auditor.record("logout", actor_kind=actor[0], actor_id=actor[1], ip=ip)
    return len(live)


# patients and shares -----------------------------------------------------------------------------
@dataclass
class PatientSignIn:
    session: NewSession
    methods: list[str]
    open_study_uid: str | None = None


def start_patient_session(ctx, patient, *, old=(), ip: str = "", user_agent: str = "",
                          verified: bool = True, wechat_binding: int | None = None,
                          methods: str = "") -> NewSession:
    """The one patient session start (identity verification, WeChat): the browser's earlier
    patient sessions (`old`) end, its share sessions stay. A WeChat sign-in is audited here
    (`wechat.signin`); a verification has its `verify` record already."""
    with write_transaction():
        end_sessions(old)
        new = access.new_patient_session(patient, ip=ip, user_agent=user_agent,
                                         verified=verified)
        if wechat_binding is not None:
            ctx.auditor.record("wechat.signin", actor_kind="patient",
                               actor_id=patient.patient_id, ip=ip,
                               object_type="wechat_binding", object_id=str(wechat_binding),
                               detail=methods)
    return new


def verify_patient(ctx, factors: dict, *, exam_ref: tuple[str, str] | None = None, old=(),
                   ip: str = "", user_agent: str = "") -> PatientSignIn:
    """Identity verification → a patient session (verified now). `exam_ref` (a PACS code
    (kind, value)): the identity must own that exam, whose film view opens next."""
    exam = access.exam_for_pacs_code(*exam_ref) if exam_ref else None
    bound = (exam.id if exam else -1) if exam_ref else None
    v = access.verify_identity(factors, catalog=ctx.catalog, key=ctx.secret_key,
                               auditor=ctx.auditor, ip=ip,
                               ip_limit=ctx.config.access_ip_max_failures, bound_exam_id=bound)
    new = start_patient_session(ctx, v.patient, old=old, ip=ip, user_agent=user_agent)
    return PatientSignIn(new, v.methods, exam.study_uid if exam else None)


def open_patient_qr(ctx, token: str, factors: dict, *, old=(), ip: str = "",
                    user_agent: str = "") -> access.OpenedPatientQr:
    """Identity verification as a patient QR's patient: one open and a patient session;
    the browser's earlier patient sessions end."""
    opened = access.open_patient_qr(token, factors, catalog=ctx.catalog, key=ctx.secret_key,
                                    auditor=ctx.auditor, ip=ip, user_agent=user_agent,
                                    ip_limit=ctx.config.access_ip_max_failures)
    end_sessions(old)
    return opened


def open_share(ctx, token: str, code: str | None, *, ip: str = "",
               user_agent: str = "") -> access.OpenedShare:
    """A share's code (None: a signed PACS token) → one open and a share session."""
    return access.open_share(token, code, key=ctx.secret_key, auditor=ctx.auditor, ip=ip,
                             user_agent=user_agent,
                             ip_limit=ctx.config.access_ip_max_failures)


# WeChat -----------------------------------------------------------------------------------------
def wechat_visit(ctx, openid: str, *, old=(), ip: str = "",
                 user_agent: str = "") -> tuple[str, NewSession | None]:
    """After WeChat's web authorisation: a visit (its cookie value) and, when this WeChat
    user has bound a patient, a session as the patient used last (None: not bound)."""
    visit = store.start_visit(openid)
    binding = store.use_binding(openid)
    if binding is None:
        return visit.token, None
    return visit.token, start_patient_session(ctx, binding.patient, old=old, ip=ip,
                                              user_agent=user_agent, verified=False,
                                              wechat_binding=binding.id, methods="wechat")


def wechat_bind(ctx, openid: str, factors: dict, *, old=(), ip: str = "",
                user_agent: str = "") -> tuple[int, NewSession]:
    """Identity verification binds the patient to this WeChat user and signs in as them.
    Raises store.WechatError (too many bindings) or access.AccessRefused."""
    v = access.verify_identity(factors, catalog=ctx.catalog, key=ctx.secret_key,
                               auditor=ctx.auditor, ip=ip,
                               ip_limit=ctx.config.access_ip_max_failures)
    b = store.bind_patient(openid, v.patient, methods=v.methods, auditor=ctx.auditor, ip=ip)
    return b.id, start_patient_session(ctx, v.patient, old=old, ip=ip, user_agent=user_agent,
                                       verified=True, wechat_binding=b.id,
                                       methods="+".join(v.methods))


def wechat_switch(ctx, openid: str, binding_id: int, *, old=(), ip: str = "",
                  user_agent: str = "") -> NewSession:
    """Sign in as another patient bound to this WeChat user. Raises store.WechatError."""
    b = store.use_binding(openid, binding_id)
    return start_patient_session(ctx, b.patient, old=old, ip=ip, user_agent=user_agent,
                                 verified=False, wechat_binding=b.id, methods="wechat")
