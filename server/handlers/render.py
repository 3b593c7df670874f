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

import asyncio
import functools
import hashlib
import logging

from models.storage import valid_uid

from .. import metrics
from ..render_service import FairScheduler, etag_for
from .base import UID, ApiError, BaseHandler

log = logging.getLogger(__name__)

BASE = rf"/dicomweb/studies/{UID}"
THUMBNAIL_SIZE = 128


class RenderBusy(ApiError):
    """A background render refused while this process is behind (issue 17). 429, not 503:
    nginx's passive health check counts 503 as a failed node (conf/nginx/cloudfilm-cluster.conf
    max_fails) and took a busy node out of the upstream, failing every request of its
    studies with 502 (found by bench/load_bench.py)."""

    retry_after_s = 2
    quiet = True            # the access log's 429 line says it all: no second line per shed

    def __init__(self):
        super().__init__(429, "服务器繁忙，预览稍后加载 / the server is busy: previews load a "
                              "little later", log_message="background render shed")


class RenderedHandler(BaseHandler):
    """Shared parsing and writing for every rendered resource."""

    _queued = None       # this request's render while it waits in the fair queue

    def initialize(self, ctx, kind: str = "frame") -> None:
        super().initialize(ctx)
        self.kind = kind
        self.renders = ctx.renders

    def on_connection_close(self) -> None:
        """The client went away (a phone scrolled on, a tab closed): a render still waiting
        in the queue is dropped before it starts, so it costs nothing (issue 17)."""
        if self._queued is not None and not self._queued.done():
            self._queued.cancel()
        super().on_connection_close()

    def render_priority(self) -> int:
        """The viewer's hint (X-Render-Priority): 0 the frame a person is waiting for, 1 a
        frame near it (also without a hint: an <img>, another client), 2 a preview or
        prefetch that may wait or be refused while the queue is long."""
        hint = self.request.headers.get("X-Render-Priority", "")
        return int(hint) if hint in ("0", "1", "2") else FairScheduler.NEAR

    def shed_background(self, queued: bool) -> None:
        """Refuse a background request (429 + Retry-After) while this process is behind:
        its event loop runs late, or (queued: it needs a render) the render queue is longer
        than render_shed_background_ms. The frame a person waits for is never refused."""
        if self.render_priority() != FairScheduler.BACKGROUND:
            return
        renders, config = self.renders, self.ctx.config
        renders.loop_lag.start(asyncio.get_running_loop())
        if renders.loop_lag.lag_s * 1000 > config.render_shed_loop_lag_ms or (
                queued and renders.scheduler.backlog_s() * 1000 >
                config.render_shed_background_ms):
            metrics.RENDERS_SHED.inc()
            raise RenderBusy()

    async def run_queued(self, heavy: bool, fn, *args, **kwargs):
        """renders.run_fair for this request; None when its client left before it ran."""
        priority = self.render_priority()
        if not heavy:
            self.shed_background(queued=True)
        task = asyncio.ensure_future(self.renders.run_fair(self.render_principal(), heavy,
                                                           fn, *args, priority=priority,
                                                           **kwargs))
        self._queued = task
        try:
            return await task
        except asyncio.CancelledError:
            if not task.cancelled() or not self.request.connection.stream.closed():
                raise                        # not ours: the server itself is stopping
            return None

    async def prepare(self) -> None:
        await super().prepare()
        # anonymous callers get one answer (401) before any lookup, so the answer never
        # tells an existing Study/Series/SOP UID from a made-up one
        self.require_principal()
        self.shed_background(queued=False)      # before any lookup or check

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
        # parsed here, once, into values: "40,400" and "40.0,400.0" are one cache entry and
        # one ETag, and a malformed value is a 400 before anything is looked up
        from render.pipeline import parse_viewport, parse_window
        window = parse_window(window) if window is not None else None
        viewport = parse_viewport(viewport) if viewport is not None else None
        return dict(window=window, viewport=viewport, quality=quality, fmt=self.media_type(),
                    rotate=rotate, flip_h="h" in flip, flip_v="v" in flip,
                    invert=invert in ("true", "1"))

    async def instance(self, study, series, sop):
        ref = self.renders.cached_instance(study, series, sop)
        if ref is None:
            ref = await self.in_db(self.renders.lookup_instance, study, series, sop)
        await self.check_access(ref)
        return ref

    async def check_access(self, ref) -> None:
        state = self.renders.cached_exam_state(ref.exam_id)
        if state is None:
            state = await self.in_db(self.renders.exam_state, ref.exam_id)
        patient_db_id, images_enabled = state
        self.check_exam(exam_id=ref.exam_id, patient_db_id=patient_db_id,
                          images_enabled=images_enabled, need="images")
        self.ctx.views.seen(self, "series.view", "series", ref.series_uid)

    async def send_render(self, ref, frame_index: int, params: dict) -> None:
        if not 0 <= frame_index < max(ref.frames, 1):
            raise ApiError(404, f"frame {frame_index + 1} does not exist: this instance has "
                                f"{ref.frames} frame(s), numbered from 1")
        key = (ref.sop_uid, ref.sha256, frame_index, tuple(sorted(params.items())))
        await self.send_image(ref.sha256, key, params["fmt"],
                              functools.partial(self.renders.render, ref, frame_index, **params))

    def render_principal(self) -> str:
        """Whose queue a render waits in (fair scheduling, issue 14): the session, else the
        staff API token's user, else the address of an anonymous caller."""
        p = self.principal
        if p is None:
            return f"ip:{self.client_ip()}"
        if p.session_id is not None:
            return f"session:{p.session_id}"
        return f"{p.kind}:{p.subject}"

    def max_render_px(self) -> int:
        """Longest side of a MIP/MPR image for this caller: staff, or patient/visitor."""
        p, c = self.principal, self.ctx.config
        staff = p is not None and p.kind == "staff"
        return c.render_max_px_staff if staff else c.render_max_px_visitor

    async def send_image(self, etag_seed: str, key, fmt: str, produce,
                         heavy: bool = False) -> None:
        """ETag and 304, then the encoded-image cache, then produce() in the render pool
        (scheduled fairly per principal; heavy: MIP/MPR)."""
        etag = etag_for(etag_seed, key)
        self.set_header("ETag", etag)
        self.set_header("Cache-Control", "private, max-age=3600")
        if etag in self.request.headers.get("If-None-Match", ""):
            self.set_status(304)
            self.finish()
            return
        body = self.renders.encoded.get(key)
        if body is None:
            body = await self.run_queued(heavy, produce)
            if body is None:                 # nobody is waiting for it any more
                self.set_status(499)         # nginx's "client closed request", for the log
                self.finish()
                return
            self.renders.encoded.put(key, body)
        self.set_header("Content-Type", "image/png" if fmt == "png" else "image/jpeg")
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
        await self.check_access(ref)
        await self.send_render(ref, ref.frames // 2, params)


class StudyThumbnailHandler(RenderedHandler):
    async def get(self, study) -> None:
        self.check_uids(study)
        params = self.render_params(f"{THUMBNAIL_SIZE},{THUMBNAIL_SIZE}")
        series = await self.in_db(self.renders.lookup_study_series, study)
        refs = await self.in_db(self.renders.lookup_series, study, series[0])
        ref = refs[len(refs) // 2]
        await self.check_access(ref)
        await self.send_render(ref, ref.frames // 2, params)


def _float_arg(handler, name, default, lo, hi):
    raw = handler.get_query_argument(name, None)
    if raw in (None, ""):
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ApiError(400, f"query parameter '{name}' must be a number") from None
    if not (lo <= v <= hi):       # also refuses NaN
        raise ApiError(400, f"query parameter '{name}' must be between {lo:g} and {hi:g}")
    return v


class SeriesRenderHandler(RenderedHandler):
    """Base for renders of a whole series (MPR planes, 3D projections)."""

    async def series_refs(self, study, series):
        self.check_uids(study, series)
        refs = await self.in_db(self.renders.lookup_series, study, series)
        await self.check_access(refs[0])
        return refs

    def plane_args(self) -> dict:
        pos = self.get_query_argument("position", None)
        position = None
        if pos:
            parts = pos.split(",")
            try:
                nums = [float(p) for p in parts]
            except ValueError:
                raise ApiError(400, "position must be mm along the plane's axis, or x,y,z in "
                                    "patient space (mm)") from None
            if len(nums) not in (1, 3) or any(n != n or abs(n) > 1e5 for n in nums):
                raise ApiError(400, "position must be one number or three (x,y,z)")
            position = nums[0] if len(nums) == 1 else tuple(nums)
        index = self.get_query_argument("index", None)
        if index not in (None, ""):
            index = self.int_arg("index", 0, 0, 100000)
        else:
            index = None
        return dict(position=position, index=index,
                    yaw=_float_arg(self, "yaw", 0.0, -360, 360),
                    pitch=_float_arg(self, "pitch", 0.0, -360, 360))

    async def send_series_render(self, refs, key, fn, params) -> None:
        # every slice's hash: a new version of one slice (a resend) is a new image
        seed = hashlib.sha1("|".join(r.sha256 for r in refs).encode(),
                            usedforsecurity=False).hexdigest()
        await self.send_image(seed, (*key, seed), params.get("fmt", "jpeg"),
                              functools.partial(fn, refs, **params), heavy=True)

    def coarse_arg(self) -> bool:
        """coarse=1: a quick preview (X-Quality: coarse) while the full volume is built."""
        v = (self.get_query_argument("coarse", "") or "").lower()
        if v not in ("", "0", "1", "true", "false"):
            raise ApiError(400, "coarse 只能是 1 或 0 / coarse must be 1 or 0")
        return v in ("1", "true")

    def coarse_now(self, refs) -> bool:
        """A coarse=1 request answers coarse (a light render) only while the full volume is
        not built and the process is not building other series' coarse volumes."""
        return not self.renders.volume_ready(refs) and self.renders.coarse_allowed(refs)

    async def run_heavy(self, fn, *args, **kwargs):
        return await self.renders.run_fair(self.render_principal(), True, fn, *args, **kwargs)


class MprHandler(SeriesRenderHandler):
    async def get(self, study, series, plane) -> None:
        from render.pipeline import cap_viewport
        p = self.render_params()
        params = dict(self.plane_args(), window=p["window"],
                      viewport=cap_viewport(p["viewport"], self.max_render_px()),
                      quality=p["quality"], fmt=p["fmt"], invert=p["invert"],
                      slab_mm=_float_arg(self, "slab", 0.0, 0, 1000),
                      slab_mode=(self.get_query_argument("mode", "mip") or "mip")[:8])
        coarse = self.coarse_arg()
        refs = await self.series_refs(study, series)
        if coarse and self.coarse_now(refs):
            await self.send_coarse(refs, plane, params)
            return
        self.set_header("X-Quality", "full")
        key = ("mpr", series, plane, tuple(sorted(params.items())))
        await self.send_series_render(refs, key, functools.partial(self.renders.mpr,
                                                                   plane=plane), params)

    async def send_coarse(self, refs, plane, params) -> None:
        """coarse=1 while the full volume is not built: the plane from the quick coarse
        volume (a light render: it does not wait behind this viewer's full-quality ones),
        X-Quality: coarse, never cached (the full image follows)."""
        out = await self.run_queued(False, self.renders.mpr_coarse, refs, plane, **params)
        if out is None:
            self.set_status(499)
            self.finish()
            return
        body, quality = out
        self.set_header("X-Quality", quality)
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", "image/png" if params["fmt"] == "png" else "image/jpeg")
        self.finish(body)


class MprGeometryHandler(SeriesRenderHandler):
    async def get(self, study, series, plane) -> None:
        args = self.plane_args()
        viewport = self.get_query_argument("viewport", None) or None
        refs = await self.series_refs(study, series)
        out = await self.run_heavy(self.renders.mpr_geometry, refs, plane,
                                   viewport=viewport, **args)
        out["ok"] = True
        self.write_json(out)


PROJECTION_MODES = ("mip", "minip", "avg", "vr")


class MipHandler(SeriesRenderHandler):
    """3D projections: MIP/MinIP/average, or volume rendering (mode=vr, preset=...)."""

    def projection_mode(self) -> tuple[str, str | None]:
        """mode=mip|minip|avg|vr and, for vr, preset=bone|cta|lung|soft (default bone)."""
        from render.vr import PRESET_NAMES
        mode = (self.get_query_argument("mode", "mip") or "mip").strip().lower()
        if mode not in PROJECTION_MODES:
            raise ApiError(400, "未知的三维显示方式 / unknown 3D mode; use "
                                + ", ".join(PROJECTION_MODES))
        if mode != "vr":
            return mode, None             # a preset means nothing here: one cache entry
        preset = (self.get_query_argument("preset", "bone") or "bone").strip().lower()
        if preset not in PRESET_NAMES:
            raise ApiError(400, "未知的容积再现预设 / unknown volume rendering preset; use "
                                + ", ".join(PRESET_NAMES))
        return mode, preset

    async def get(self, study, series) -> None:
        p = self.render_params()
        mode, preset = self.projection_mode()
        params = dict(yaw=_float_arg(self, "yaw", 0.0, -360, 360),
                      pitch=_float_arg(self, "pitch", 0.0, -360, 360),
                      size=min(self.int_arg("size", 256, 16, 2048), self.max_render_px()),
                      mode=mode, preset=preset,
                      window=p["window"], quality=p["quality"], fmt=p["fmt"],
                      invert=p["invert"])
        refs = await self.series_refs(study, series)
        key = ("mip", series, tuple(sorted(params.items())))
        await self.send_series_render(refs, key, self.renders.mip, params)


class VolumeInfoHandler(SeriesRenderHandler):
    async def get(self, study, series) -> None:
        coarse = self.coarse_arg()
        refs = await self.series_refs(study, series)
        if coarse and self.coarse_now(refs):            # light, as the coarse planes
            vol = await self.run_queued(False, self.renders.coarse_volume, refs)
            if vol is None:                     # nobody is waiting for it any more
                self.set_status(499)
                self.finish()
                return
        else:
            vol = await self.run_heavy(self.renders.volume, refs)
        out = self.renders.volume_info_of(vol)
        out["ok"] = True
        self.write_json(out)


class TileHandler(RenderedHandler):
    async def get(self, study, series, sop, frame, level, tx, ty) -> None:
        self.check_uids(study, series, sop)
        p = self.render_params()
        tile_size = self.int_arg("tile_size", 256, 64, 1024)
        ref = await self.instance(study, series, sop)
        n = int(frame)
        if not 1 <= n <= ref.frames:
            raise ApiError(404, f"frame {n} does not exist: this instance has {ref.frames}")
        params = dict(tile_size=tile_size, window=p["window"], quality=p["quality"],
                      fmt=p["fmt"], invert=p["invert"])
        key = ("tile", sop, ref.sha256, n, int(level), int(tx), int(ty), tuple(sorted(params.items())))
        await self.send_image(ref.sha256, key, p["fmt"], functools.partial(
            self.renders.tile, ref, n - 1, int(level), int(tx), int(ty), **params))


class ImageInfoHandler(RenderedHandler):
    async def get(self, study, series, sop) -> None:
        self.check_uids(study, series, sop)
        tile_size = self.int_arg("tile_size", 256, 64, 1024)
        ref = await self.instance(study, series, sop)
        info = await self.renders.run(self.renders.image_info, ref)
        info["pyramid"] = await self.renders.run(self.renders.pyramid, ref, tile_size)
        info["ok"] = True
        self.write_json(info)


class FrameValuesHandler(RenderedHandler):
    """Stored pixel values of one grey frame (the workspace's CT value at the pointer and
    its region statistics): application/octet-stream, int16 or float32 little-endian, row by
    row; headers X-Value-Type, X-Rows, X-Columns, X-Rescale-Slope, X-Rescale-Intercept,
    X-Modality. Same access as the rendered frame."""

    MAX_PIXELS = 4096 * 4096

    async def get(self, study, series, sop, frame) -> None:
        self.check_uids(study, series, sop)
        n = int(frame)
        if n < 1:
            raise ApiError(400, "帧号从 1 开始 / frame numbers start at 1")
        ref = await self.instance(study, series, sop)
        if n > max(ref.frames, 1):
            raise ApiError(404, f"帧 {n} 不存在 / frame {n} does not exist: this instance has "
                                f"{ref.frames} frame(s), numbered from 1")
        if ref.rows * ref.columns > self.MAX_PIXELS:
            raise ApiError(413, "图像过大，无法读取像素值 / the image is too large for pixel values")
        etag = etag_for(ref.sha256, ("values", n))
        self.set_header("ETag", etag)
        self.set_header("Cache-Control", "private, max-age=3600")
        if etag in self.request.headers.get("If-None-Match", ""):
            self.set_status(304)
            self.finish()
            return
        out = await self.run_queued(False, self.renders.frame_values, ref, n - 1)
        if out is None:
            self.set_status(499)
            self.finish()
            return
        self.send_values(*out)

    def send_values(self, body: bytes, facts: dict) -> None:
        self.set_header("Content-Type", "application/octet-stream")
        for name, key in (("X-Value-Type", "type"), ("X-Rows", "rows"), ("X-Columns", "columns"),
                          ("X-Rescale-Slope", "slope"), ("X-Rescale-Intercept", "intercept"),
                          ("X-Modality", "modality")):
            self.set_header(name, str(facts[key]))
        self.finish(body)


def routes(ctx) -> list:
    d = {"ctx": ctx}
    inst = rf"{BASE}/series/{UID}/instances/{UID}"
    return [
        (rf"{inst}/frames/([0-9-]{{1,7}})/rendered", FrameRenderedHandler, d),
        (rf"{inst}/rendered", InstanceRenderedHandler, d),
        (rf"{inst}/thumbnail", InstanceRenderedHandler, {"ctx": ctx, "kind": "thumbnail"}),
        (rf"{BASE}/series/{UID}/thumbnail", SeriesThumbnailHandler, d),
        (rf"{BASE}/thumbnail", StudyThumbnailHandler, d),
        (rf"{inst}/frames/([0-9]{{1,7}})/tiles/([0-9]{{1,2}})/([0-9]{{1,5}})/([0-9]{{1,5}})",
         TileHandler, d),
        (rf"/api/render/studies/{UID}/series/{UID}/instances/{UID}/info", ImageInfoHandler, d),
        (rf"/api/render/studies/{UID}/series/{UID}/instances/{UID}/frames/([0-9]{{1,7}})/values",
         FrameValuesHandler, d),
        (rf"/api/render/studies/{UID}/series/{UID}/mpr/([a-z]{{1,16}})", MprHandler, d),
        (rf"/api/render/studies/{UID}/series/{UID}/mpr/([a-z]{{1,16}})/geometry",
         MprGeometryHandler, d),
        (rf"/api/render/studies/{UID}/series/{UID}/mip", MipHandler, d),
        (rf"/api/render/studies/{UID}/series/{UID}/volume", VolumeInfoHandler, d),
    ]
