"""Locate a CJK TrueType font that PDF writers may embed.

A system font is preferred (the hospital's distribution may ship a better one);
otherwise the WenQuanYi Micro Hei collection bundled by the pinned pip package
``paperang-p2-fonts-cjk`` is used. Its licence (Apache-2.0 / GPLv3 with font
exception) allows embedding in generated documents.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

# (path, index of the face inside a TrueType collection); first hit wins.
SYSTEM_CJK_FONTS: tuple[tuple[str, int], ...] = (
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),
    ("/usr/share/fonts/wqy-microhei/wqy-microhei.ttc", 0),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),
    ("/usr/share/fonts/wqy-zenhei/wqy-zenhei.ttc", 0),
    # Noto Sans CJK collections: face 2 is "SC" (Simplified Chinese).
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/truetype/noto/NotoSansSC-Regular.ttf", 0),
    ("/usr/share/fonts/noto/NotoSansSC-Regular.otf", 0),
)


class CJKFontNotFound(RuntimeError):
    """No CJK font could be found for PDF generation."""


def _bundled_font() -> Path | None:
    try:
        import paperang_p2_fonts_cjk  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(paperang_p2_fonts_cjk.__file__).parent / "fonts" / "wqy-microhei.ttc"
    return path if path.is_file() else None


def find_cjk_font() -> tuple[Path, int]:
    """Return ``(path, collection_index)`` of a CJK font usable for embedding.

    ``collection_index`` is the face number inside a ``.ttc`` collection
    (0 for plain ``.ttf``/``.otf`` files).
    """
    for candidate, index in SYSTEM_CJK_FONTS:
        path = Path(candidate)
        if path.is_file():
            log.debug("using system CJK font %s (face %d)", path, index)
            return path, index
    bundled = _bundled_font()
    if bundled is not None:
        log.debug("using bundled CJK font %s", bundled)
        return bundled, 0
    raise CJKFontNotFound(
        "no CJK font found: install the pinned pip package 'paperang-p2-fonts-cjk' "
        "(see requirements.txt) or a system font such as fonts-wqy-microhei "
        "(/usr/share/fonts/truetype/wqy/wqy-microhei.ttc)"
    )
