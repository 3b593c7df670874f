"""QR codes for share links and PACS slips: PNG and SVG made on the spot (qrcode)."""
from __future__ import annotations

import base64
import io

import qrcode
import qrcode.constants
import qrcode.image.svg


def _qr(text: str, border: int) -> qrcode.QRCode:
    if not text or len(text) > 1000:
        raise ValueError("QR text must be 1 to 1000 characters")
    q = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=border)
    q.add_data(text)
    q.make(fit=True)
    return q


def qr_png(text: str, box_size: int = 8, border: int = 2) -> bytes:
    q = _qr(text, border)
    q.box_size = box_size
    img = q.make_image(fill_color="black", back_color="white")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def qr_svg(text: str, border: int = 2) -> str:
    q = _qr(text, border)
    img = q.make_image(image_factory=getattr(qrcode.image.svg, "SvgPathFillImage",
                                                qrcode.image.svg.SvgPathImage))
    return img.to_string(encoding="unicode")


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
