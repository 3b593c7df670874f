"""WADO-URI (PS3.18 chapter 9, the URI service of older viewers, RIS and EMR links):

    GET /wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…[&contentType=…]

- contentType image/jpeg (the default) or image/png: a rendered frame (frameNumber,
  windowCenter with windowWidth, rows/columns as the viewport, imageQuality), through the same
  render path, cache and access checks as /dicomweb/…/rendered;
- contentType application/dicom: the instance as one body, in its stored transfer syntax when
  `transferSyntax` names it, otherwise in explicit VR little endian (the standard's default);
- anonymize=yes, region and presentation-state references are not offered (400 naming them).
"""
from __future__ import annotations

from .base import ApiError
from .dicomweb import DicomWebHandler, dw
from .render import RenderedHandler

DICOM = "application/dicom"
IMAGES = {"image/jpeg": "jpeg", "image/jpg": "jpeg", "image/png": "png", "image/*": "jpeg",
          "*/*": "jpeg"}
NOT_OFFERED = ("region", "presentationUID", "presentationSeriesUID")


class WadoUriHandler(RenderedHandler, DicomWebHandler):
    """WADO-URI: one instance as a rendered JPEG/PNG or as application/dicom."""

    async def get(self) -> None:
        q = self.get_query_argument
        if (q("requestType", "") or "") != "WADO":
            raise ApiError(400, "requestType=WADO is required / 需要 requestType=WADO")
        uids = [q(name, "") or "" for name in ("studyUID", "seriesUID", "objectUID")]
        if not all(uids):
            raise ApiError(400, "studyUID, seriesUID and objectUID are required / "
                                "需要 studyUID、seriesUID 和 objectUID")
        self.check_uids(*uids)
        unsupported = [n for n in NOT_OFFERED if q(n, None)]
        if (q("anonymize", "") or "").lower() == "yes":
            unsupported.append("anonymize=yes")
        if unsupported:
            raise ApiError(400, f"not offered by this server: {', '.join(unsupported)}")
        kind = self.content_type()
        if kind == "dicom":
            await self.send_dicom(*uids)
        else:
            await self.send_frame(uids, kind)

    def content_type(self) -> str:
        """'dicom', 'jpeg' or 'png' from contentType (a comma-separated list, in order of
        preference; default image/jpeg)."""
        for item in (self.get_query_argument("contentType", "") or "image/jpeg").split(","):
            media = item.split(";")[0].strip().lower()
            if media == DICOM:
                return "dicom"
            if media in IMAGES:
                return IMAGES[media]
        raise ApiError(406, "contentType may be image/jpeg, image/png or application/dicom")

    async def send_frame(self, uids: list[str], fmt: str) -> None:
        center, width = (self.get_query_argument(n, None) for n in ("windowCenter",
                                                                       "windowWidth"))
        if (center is None) != (width is None):
            raise ApiError(400, "windowCenter and windowWidth go together")
        rows, columns = (self.int_arg(n, 0, 0, 8192) for n in ("rows", "columns"))
        from render.pipeline import parse_viewport, parse_window
        params = dict(window=parse_window(f"{center},{width}") if center is not None else None,
                      viewport=parse_viewport(f"{columns or rows},{rows or columns}")
                      if rows or columns else None,
                      quality=self.int_arg("imageQuality", self.ctx.config.default_jpeg_quality,
                                           1, 100),
                      fmt=fmt, rotate=0, flip_h=False, flip_v=False, invert=False)
        frame = self.int_arg("frameNumber", 1, 1, 100000)
        ref = await self.instance(*uids)
        await self.send_render(ref, frame - 1, params)

    async def send_dicom(self, study: str, series: str, sop: str) -> None:
        found = await self.load_files(study, series, sop)
        f = found["files"][0]
        data = await self.read(f["file_path"])
        ts = f["transfer_syntax"]
        wanted = self.get_query_argument("transferSyntax", "") or dw.EXPLICIT_LE
        if wanted != ts:
            if wanted != dw.EXPLICIT_LE:
                raise ApiError(406, f"transferSyntax may be the stored {ts} or explicit VR "
                                    f"little endian {dw.EXPLICIT_LE}")
            data, ts = await self.transcode(data, single=True)
        self.set_header("Content-Type", DICOM)
        self.set_header("Cache-Control", "private, no-store")
        self.set_header("Content-Disposition", f'attachment; filename="{sop}.dcm"')
        self.finish(data)


def routes(ctx) -> list:
    return [(r"/wado", WadoUriHandler, {"ctx": ctx})]
