"""Staff accounts: password hashing (scrypt, memory-hard) and the first administrator."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from .schema import StaffUser

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 15, 8, 1


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


def ensure_first_admin(password: str | None) -> str | None:
    """Create the 'admin' system administrator if no staff account exists yet.

    Returns the generated password when one had to be made (to be shown once), else None.
    The password is stored only hashed, and must be changed at first login.
    """
    if StaffUser.select().exists():
        return None
    generated = None
    if not password:
        generated = password = secrets.token_urlsafe(12)
    StaffUser.create(username="admin", display_name="系统管理员",
                     password_hash=hash_password(password), roles="sysadmin",
                     must_change_password=True)
    return generated
