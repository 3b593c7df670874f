"""DICOMweb rendered resources and thumbnails, served from server-side renders.

    /dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{n}/rendered
    /dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered
    /dicomweb/studies/{study}/series/{series}/instances/{instance}/thumbnail
    /dicomweb/studies/{study}/series/{series}/thumbnail
    /dicomweb/studies/{study}/thumbnail

Query: window=center,width[,function]  viewport=vw,vh[,sx,sy,sw,sh]  quality=1..100,
and our extensions rotate=0|90|180|270, flip=h|v|hv, invert=true|false.
Accept: image/jpeg (default) or image/png (or ?accept=image/png).
Responses carry an ETag and Cache-Control: private (patient data: never a shared cache).
"""
from __future__ import annotations

import logging

from models.storage import valid_uid

from ..render_service import etag_for
from .base import ApiError, BaseHandler

log = logging.getLogger(__name__)

UID = r"([0-9][0-9.]{0,63})"
BASE = rf"/dicomweb/studies/{UID}"
THUMBNAIL_SIZE = 128


class RenderedHandler(BaseHandler):
    """Shared parsing and writing for every rendered resource."""

    def initialize(self, ctx, kind: str = "frame") -> None:
        super().initialize(ctx)
        self.kind = kind
        self.renders = ctx.renders

    def check_uids(self, *uids: str) -> None:
        for uid in uids:
            if not valid_uid(uid):
                raise ApiError(400, "a UID in the path is not a valid DICOM UID")

    def media_type(self) -> str:
        accept = (self.get_query_argument("accept", "") or self.request.headers.get(
            "Accept", "")).lower()
        if "image/png" in accept and "image/jpeg" not in accept:
            return "png"
        if accept and not any(t in accept for t in ("image/jpeg", "image/*", "*/*",
                                                     "image/png")):
            raise ApiError(406, "this resource is available as image/jpeg or image/png")
        return "jpeg"

    def render_params(self, default_viewport=None) -> dict:
        q = self.get_query_argument
        quality = self.int_arg("quality", self.ctx.config.default_jpeg_quality, 1, 100)
        window = q("window", None) or None
        viewport = q("viewport", None) or default_viewport
        rotate = self.int_arg("rotate", 0, 0, 270)
        if rotate % 90:
            raise ApiError(400, "rotate must be 0, 90, 180 or 270")
        flip = (q("flip", "") or "").lower()
        if flip not in ("", "h", "v", "hv", "vh"):
            raise ApiError(400, "flip must be h, v or hv")
        invert = (q("invert", "false") or "false").lower()
        if invert not in ("true", "false", "1", "0"):
            raise ApiError(400, "invert must be true or false")
        for name, value in (("window", window), ("viewport", viewport)):
            if isinstance(value, str) and len(value) > 100:
                raise ApiError(400, f"{name} is too long")
        return dict(window=window, viewport=viewport, quality=quality, fmt=self.media_type(),
                    rotate=rotate, flip_h="h" in flip, flip_v="v" in flip,
                    invert=invert in ("true", "1"))

    async def instance(self, study, series, sop):
        ref = self.renders.cached_instance(study, series, sop)
        if ref is None:
            ref = await self.in_db(self.renders.lookup_instance, study, series, sop)
        self.check_access(ref)
        return ref

    def check_access(self, ref) -> None:
        """Until staff login exists, rendering is served on loopback only (bind address)."""
        return None

    async def send_render(self, ref, frame_index: int, params: dict) -> None:
        if not 0 <= frame_index < max(ref.frames, 1):
            raise ApiError(404, f"frame {frame_index + 1} does not exist: this instance has "
                                f"{ref.frames} frame(s), numbered from 1")
        key = (ref.sop_uid, frame_index, tuple(sorted(params.items())))
        etag = etag_for(ref.sha256, key)
        self.set_header("ETag", etag)
        self.set_header("Cache-Control", "private, max-age=3600")
        if etag in self.request.headers.get("If-None-Match", ""):
            self.set_status(304)
            self.finish()
            return
        body = self.renders.encoded.get(key)
        if body is None:
            body = await self.renders.run(self.renders.render, ref, frame_index, **params)
            self.renders.encoded.put(key, body)
        self.set_header("Content-Type", "image/png" if params["fmt"] == "png" else "image/jpeg")
        self.finish(body)


class FrameRenderedHandler(RenderedHandler):
    async def get(self, study, series, sop, frame) -> None:
        self.check_uids(study, series, sop)
        try:
            n = int(frame)
        except ValueError:
            raise ApiError(400, "the frame number must be a whole number from 1") from None
        if n < 1 or n > 100000:
            raise ApiError(400 if n < 1 else 404, "frame numbers start at 1")
        params = self.render_params()
        ref = await self.instance(study, series, sop)
        await self.send_render(ref, n - 1, params)


class InstanceRenderedHandler(RenderedHandler):
    async def get(self, study, series, sop) -> None:
        self.check_uids(study, series, sop)
        thumb = self.kind == "thumbnail"
        params = self.render_params(f"{THUMBNAIL_SIZE},{THUMBNAIL_SIZE}" if thumb else None)
        ref = await self.instance(study, series, sop)
        await self.send_render(ref, (ref.frames // 2) if thumb else 0, params)


class SeriesThumbnailHandler(RenderedHandler):
    async def get(self, study, series) -> None:
        self.check_uids(study, series)
        params = self.render_params(f"{THUMBNAIL_SIZE},{THUMBNAIL_SIZE}")
        refs = await self.in_db(self.renders.lookup_series, study, series)
        ref = refs[len(refs) // 2]
        self.check_access(ref)
        await self.send_render(ref, ref.frames // 2, params)


class StudyThumbnailHandler(RenderedHandler):
    async def get(self, study) -> None:
        self.check_uids(study)
        params = self.render_params(f"{THUMBNAIL_SIZE},{THUMBNAIL_SIZE}")
        series = await self.in_db(self.renders.lookup_study_series, study)
        refs = await self.in_db(self.renders.lookup_series, study, series[0])
        ref = refs[len(refs) // 2]
        self.check_access(ref)
        await self.send_render(ref, ref.frames // 2, params)


def render_routes(ctx) -> list:
    d = {"ctx": ctx}
    inst = rf"{BASE}/series/{UID}/instances/{UID}"
    return [
        (rf"{inst}/frames/([0-9-]{{1,7}})/rendered", FrameRenderedHandler, d),
        (rf"{inst}/rendered", InstanceRenderedHandler, d),
        (rf"{inst}/thumbnail", InstanceRenderedHandler, {"ctx": ctx, "kind": "thumbnail"}),
        (rf"{BASE}/series/{UID}/thumbnail", SeriesThumbnailHandler, d),
        (rf"{BASE}/thumbnail", StudyThumbnailHandler, d),
    ]
