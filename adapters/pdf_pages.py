"""Report PDF pages rendered to images on the server (pypdfium2), so a phone shows the
report without a PDF viewer. PDFium is not thread-safe: every call holds one lock."""
from __future__ import annotations

import contextlib
import io
import logging
import threading

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
MAX_WIDTH = 2480            # A4 at 300 dpi


class PdfError(Exception):
    status = 422


@contextlib.contextmanager
def _document(pdf: bytes):
    """The PDF open under the lock (PDFium is not thread-safe), closed afterwards."""
    import pypdfium2 as pdfium
    with _LOCK:
        try:
            doc = pdfium.PdfDocument(pdf)
        except pdfium.PdfiumError as exc:
            raise PdfError(f"the report PDF cannot be read ({exc})") from None
        try:
            yield doc
        finally:
            doc.close()


def page_count(pdf: bytes) -> int:
    with _document(pdf) as doc:
        return len(doc)


def render_page(pdf: bytes, index: int, width: int = 1080, fmt: str = "png") -> bytes:
    """Page `index` (0-based) scaled to `width` pixels, as PNG (or JPEG)."""
    if not 100 <= width <= MAX_WIDTH:
        raise ValueError(f"width must be 100..{MAX_WIDTH}")
    with _document(pdf) as doc:
        if not 0 <= index < len(doc):
            raise IndexError(index)
        page = doc[index]
        image = page.render(scale=width / page.get_width()).to_pil()
        page.close()
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buf, "JPEG", quality=85)
    else:
        image.convert("RGB").save(buf, "PNG", optimize=False, compress_level=6)
    return buf.getvalue()
