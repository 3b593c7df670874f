"""Staff accounts: password hashing (scrypt, memory-hard) and the first administrator."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import peewee as pw

from .schema import StaffUser

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 15, 8, 1

# The admin roles of 三员分立 (server/policy.py uses this set). They act only through a
# signed-in session (password, TOTP, allow-list): they never hold an API token.
ADMIN_ROLES = frozenset({"sysadmin", "secadmin", "auditadmin"})
# The password hash of a service account: no password ever matches it.
NO_PASSWORD = "!service-account"


def roles_of_user(user: StaffUser) -> set[str]:
    return {r for r in (user.roles or "").split(",") if r}


def token_refusal(owner: StaffUser, issuer: StaffUser | None = None) -> str | None:
    """Why `issuer` may not give `owner` an API token (None: it may). An admin-role account
    never holds one; a user may take one for themself; the system admin may issue one to an
    integration service account only (issuer None: the server's own command line, run by
    the operating system's administrator, with the same rule for admin roles)."""
    if roles_of_user(owner) & ADMIN_ROLES:
        return ("管理员账号（系统、安全、审计管理员）不能持有 API 令牌，只能登录使用 / admin accounts "
                "(system, security, audit admin) cannot hold API tokens; they sign in")
    if not owner.active:
        return "账号已停用 / the account is deactivated"
    if issuer is None or issuer.id == owner.id or owner.service_account:
        return None
    return ("只能为自己或集成服务账号签发 API 令牌 / API tokens are issued to their owner or, by "
            "the system admin, to integration service accounts only")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=128 * 1024 * 1024, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                             p=int(p), maxmem=128 * 1024 * 1024, dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


class PasswordPolicyError(ValueError):
    pass


def check_password_strength(password: str, *, min_length: int = 8, min_classes: int = 3,
                            username: str = "") -> None:
    """At least min_length characters of min_classes kinds (lower, upper, digit, other)."""
    if len(password) < min_length:
        raise PasswordPolicyError(f"密码至少 {min_length} 位 / the password needs at least "
                                  f"{min_length} characters")
    if len(password) > 256:
        raise PasswordPolicyError("密码过长 / the password is too long")
    classes = sum([any(c.islower() for c in password), any(c.isupper() for c in password),
                   any(c.isdigit() for c in password),
                   any(not c.isalnum() for c in password)])
    if classes < min_classes:
        raise PasswordPolicyError(f"密码须包含大写字母、小写字母、数字、符号中的至少 {min_classes} 类 / "
                                  f"use at least {min_classes} of: lower case, upper case, "
                                  "digits, symbols")
    if username and username.lower() in password.lower():
        raise PasswordPolicyError("密码不能包含用户名 / the password must not contain the "
                                  "user name")


def create_user(username: str, password: str, roles: list[str], *, display_name: str = "",
                must_change_password: bool = True) -> StaffUser:
    import re
    if not re.fullmatch(r"[A-Za-z0-9_.-]{2,32}", username or ""):
        raise ValueError("用户名须为 2-32 位字母、数字、_ . - / the user name must be 2-32 "
                         "letters, digits, _ . or -")
    check_password_strength(password, username=username)
    return StaffUser.create(username=username, display_name=display_name[:64] or username,
                            password_hash=hash_password(password), roles=",".join(roles),
                            must_change_password=must_change_password)


def ensure_first_admin(password: str | None) -> str | None:
    """Create the 'admin' system administrator if no staff account exists yet.

    Returns the generated password when one had to be made (to be shown once), else None.
    The password is stored only hashed, and must be changed at first login. Nodes started
    together on one empty database: the first to insert makes 'admin' (and shows its
    password); the others find it made (the unique username) and go on.
    """
    if StaffUser.select().exists():
        return None
    generated = None
    if not password:
        # Four classes for certain, so the policy accepts it.
        generated = password = "Cf-" + secrets.token_urlsafe(12) + "a9"
    try:
        with StaffUser._meta.database.atomic():
            StaffUser.create(username="admin", display_name="系统管理员",
                             password_hash=hash_password(password), roles="sysadmin",
                             must_change_password=True)
    except pw.IntegrityError:
        return None                 # another node made it at the same moment
    return generated
