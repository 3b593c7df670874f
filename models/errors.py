"""The one family of domain errors.

A use case that refuses something raises a DomainError (or a subclass: CatalogError,
StaffError, AccessRefused, policy.AccessError, the handlers' ApiError). Each carries:

- ``status``: the HTTP status the server answers with (the base handler maps it; models/
  knows nothing of HTTP beyond this number);
- ``message``: what the user reads (Chinese / English), never internal detail;
- ``log_message``: what the server log gets instead, when it should say more (an internal
  reason, an ID); it never holds names, ID numbers or phone numbers;
- ``code``: an optional machine-readable word the page acts on (``csrf_stale``).

render/ has its own root (render.errors.RenderError, same attributes) because render/ imports
nothing of ours; the base handler maps both.
"""
from __future__ import annotations


class DomainError(Exception):
    status = 400
    code: str | None = None

    def __init__(self, message: str = "", *, status: int | None = None,
                 log_message: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.log_message = log_message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class DatabaseUnavailable(DomainError):
    """The database cannot be reached (down, restarting, unreachable, its disk failing): a
    temporary state, answered 503 with Retry-After (models/db.py `unavailable` tells these
    errors from real faults; `outage` logs one line when it starts and one when it ends)."""

    status = 503
    code = "db_unavailable"
    retry_after_s = 5

    def __init__(self, log_message: str | None = None):
        super().__init__("数据库暂时不可用，请稍后重试 / the database is temporarily "
                         "unavailable; please try again shortly", log_message=log_message)
