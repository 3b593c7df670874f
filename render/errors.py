"""Errors raised by render/.

Every error carries the HTTP status the server should answer with (``status``) and an
English message that names the problem and says how to fix it. The server maps the family
to its JSON error shape in one place; render/ never imports anything HTTP.
"""
from __future__ import annotations


class RenderError(Exception):
    """Base class: something about the image or the request prevents rendering."""

    status = 500
    log_message: str | None = None     # as models.errors.DomainError: the log's wording

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class BadRenderParameter(RenderError):
    """A rendering parameter (window, viewport, quality, plane, ...) is malformed."""

    status = 400


class FrameOutOfRange(RenderError):
    """The requested frame (or tile) does not exist in this image."""

    status = 404


class TileOutOfRange(FrameOutOfRange):
    """The requested pyramid level or tile coordinates lie outside the image."""

    status = 404


class UnsupportedImage(RenderError):
    """Transfer syntax, photometric interpretation or pixel layout we cannot display."""

    status = 415


class CorruptPixelData(RenderError):
    """Pixel data missing, truncated or undecodable."""

    status = 422


class VolumeError(RenderError):
    """A set of slices cannot form a volume (mixed sizes, orientations, gaps...)."""

    status = 422
