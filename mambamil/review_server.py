"""The review web server (Starlette + uvicorn): cohort page, Bokeh deep-zoom slide viewer, tiles, verdicts.

URLs carry slide ids, map names and tile numbers only; each is looked up in :class:`mambamil.review.ReviewData`
(unknown → 404, malformed tile numbers → 400). BokehJS is served from the installed ``bokeh`` package, so the
pages work offline (no CDN).

Who may read and write (the server is reachable by every page the reviewer has open):

- the Host header must name the bound address (or ``localhost`` on loopback): a DNS-rebinding page is refused;
- verdicts are written only as ``application/json``, with a same-origin ``Origin``/``Sec-Fetch-Site`` when the
  browser sends them, and the per-start write token embedded in the viewer page (header ``X-Mambamil-Token``);
  no ``<form>`` or ``no-cors`` fetch can send both;
- request bodies over ``MAX_BODY`` are refused before they are read; JSON nested too deep is a 400;
- binding anything but loopback needs an access token (``MAMBAMIL_REVIEW_TOKEN``); when one is set, every
  request must carry it (cookie set by opening ``/?token=…``, or ``Authorization: Bearer …``).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from mambamil.errors import MambamilError
from mambamil.review import (
    CMAPS,
    HOST,
    PORT,
    TILE,
    VERDICTS,
    BadRequest,
    Busy,
    NotFound,
    ReviewData,
    colour_hex,
    marker_colours,
)

BOKEH_PREFIX = "/bokeh/"
#: Browsers may cache tiles for an hour (they change only when the results are redrawn).
CACHE = {"Cache-Control": "private, max-age=3600"}
#: Largest request body read (bytes): a 20,000-character note JSON-escaped at worst, with room to spare.
MAX_BODY = 256 * 1024
#: The environment variable holding the access token (needed to bind anything but loopback).
TOKEN_ENV = "MAMBAMIL_REVIEW_TOKEN"
#: The request header carrying the per-start write token the viewer page embeds.
WRITE_TOKEN_HEADER = "X-Mambamil-Token"


class Refused(Exception):
    """A request refused with an HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str) -> list[str]:
    """Host header names accepted for a server bound to ``host``; ``["*"]`` for a wildcard address (which needs
    the access token, so a rebinding page, which never has it, still reads nothing)."""
    bare = host.strip("[]")
    if bare in ("0.0.0.0", "::", ""):
        return ["*"]
    names = [f"[{bare}]" if ":" in bare else bare]
    if is_loopback(host):
        names += ["localhost", "127.0.0.1", "[::1]"]
    return list(dict.fromkeys(names))


def check_bind(host: str, access_token: str | None) -> None:
    """Refuse to bind anything but loopback without an access token."""
    if not is_loopback(host) and not access_token:
        raise MambamilError(
            f"refusing to serve on {host} without an access token: every machine that reaches it could read and "
            f"write the verdicts; set {TOKEN_ENV} (e.g. to the output of 'openssl rand -hex 16') or bind 127.0.0.1"
        )


class AccessTokenGate:
    """Every request needs the access token: the cookie set when ``/?token=…`` is opened, or a Bearer header."""

    def __init__(self, app: ASGIApp, token: str | None, cookie: str) -> None:
        self.app, self.token, self.cookie = app, token, cookie

    def _matches(self, given: str | None) -> bool:
        return given is not None and self.token is not None and hmac.compare_digest(given, self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        response: Response
        if request.method == "GET" and self._matches(request.query_params.get("token")):
            rest = request.url.remove_query_params("token")
            response = RedirectResponse(rest.path + (f"?{rest.query}" if rest.query else ""), status_code=303)
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict")
        elif self._matches(request.cookies.get(self.cookie)) or self._matches(
            request.headers.get("authorization", "").removeprefix("Bearer ")
        ):
            await self.app(scope, receive, send)
            return
        else:
            response = PlainTextResponse(
                "this review server needs its access token: open the address it printed at start (…/?token=…)", 401
            )
        await response(scope, receive, send)


def check_write(request: Request, write_token: str) -> None:
    """A verdict write must be JSON, from the server's own origin, with the token of the page it came from."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise Refused(415, "verdicts are written as application/json only")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    origin = request.headers.get("origin")
    if origin is not None and origin != own:
        raise Refused(403, f"write from another origin ({origin}) refused")
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        raise Refused(403, f"write from a {site} page refused")
    if not hmac.compare_digest(request.headers.get(WRITE_TOKEN_HEADER, ""), write_token):
        raise Refused(403, "missing or stale page token: reload the page")


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``limit`` bytes: from Content-Length
    before reading anything, else while it streams in."""
    length = request.headers.get("content-length")
    too_large = Refused(413, f"request body over {limit} bytes")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError as exc:
        raise BadRequest("JSON nested too deep") from exc
    except ValueError as exc:
        raise BadRequest("body is not JSON") from exc

TEMPLATES = Path(__file__).parent / "templates"
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined)


def _verdict_summary(data: ReviewData) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    for (sid, reviewer), row in sorted(data.verdicts.items()):
        out.setdefault(sid, []).append(f"{row['verdict'] or '–'} ({reviewer})")
    return {sid: ", ".join(v) for sid, v in out.items()}


def viewer_layout(data: ReviewData, slide_id: str) -> Any:
    """The Bokeh document of one slide: deep-zoom slide tiles, score overlay tiles with a colour bar (percentile
    of the score), tissue contours, top/bottom-k markers in hues the colour map does not use, a scale bar and the
    view's µm/px, and widgets for the map, colour map, opacity, layers and jumping to a marker. The plot is named
    ``slide-view`` (the page's keyboard pan/zoom finds it by that name)."""
    from bokeh.layouts import column, row
    from bokeh.models import (
        CheckboxGroup,
        ColorBar,
        ColumnDataSource,
        CustomJS,
        Div,
        LinearColorMapper,
        ScaleBar,
        Select,
        Slider,
        WMTSTileSource,
    )
    from bokeh.models.annotations.dimensional import ImperialLength
    from bokeh.plotting import figure

    tiles = data.slide(slide_id)
    width, height = tiles.dimensions
    top = 2**tiles.max_level  # level-0 px per screen px at Bokeh zoom 0: the whole slide fits one 256-px tile

    def source(url: str) -> WMTSTileSource:
        # Plot coordinates are level-0 px with y pointing up (y = −row); tile (z, x, y) is deep-zoom level z.
        return WMTSTileSource(
            url=url, tile_size=TILE, initial_resolution=top, x_origin_offset=0, y_origin_offset=TILE * top,
            min_zoom=0, max_zoom=tiles.max_level, wrap_around=False, snap_to_zoom=False,
        )  # fmt: skip

    plot = figure(
        x_range=(0, width), y_range=(-height, 0), match_aspect=True, sizing_mode="stretch_width", height=760,
        tools="pan,wheel_zoom,box_zoom,reset", active_scroll="wheel_zoom", output_backend="canvas",
        name="slide-view",
    )  # fmt: skip
    plot.axis.visible = False
    plot.grid.visible = False
    plot.add_tile(source(f"/tile/{slide_id}/{{Z}}/{{X}}/{{Y}}.jpg"))
    widgets: list[Any] = []
    mpp = data.mpp(slide_id)
    if mpp:
        # Plot units are level-0 px: µm and mm are multiples of the slide's µm/px. (BokehJS registers no generic
        # CustomDimensional; ImperialLength is one with its basis replaced.)
        units = ImperialLength(
            basis={"px": (mpp, "px"), "µm": (1.0, "µm"), "mm": (1000.0, "mm")},
            ticks=[1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500],
        )  # fmt: skip
        bar = ScaleBar(range=plot.x_range, unit="px", dimensional=units, location="bottom_left", name="scale-bar")
        plot.add_layout(bar)
        scale = Div(text=f"slide: {mpp:.3g} µm/px", name="view-mpp")
        update = CustomJS(
            args=dict(plot=plot, xr=plot.x_range, div=scale, mpp=mpp),
            code="""const w = plot.inner_width; if (!(w > 0)) return;
div.text = `view: ${((xr.end - xr.start) * mpp / w).toPrecision(3)} µm/px (slide ${mpp.toPrecision(3)} µm/px)`;""",
        )
        plot.x_range.js_on_change("start", update)
        plot.x_range.js_on_change("end", update)
        plot.js_on_change("inner_width", update)
        widgets.append(scale)
    maps = data.maps(slide_id)
    layers: dict[str, Any] = {}
    polygons = data.tissue(slide_id)
    if polygons:
        xs = [ring[0] for poly in polygons for ring in poly]
        ys = [[-y for y in ring[1]] for poly in polygons for ring in poly]
        layers["tissue contours"] = plot.multi_line(xs, ys, line_color="#00c853", line_width=2)
    if maps:
        url = f"/overlay/{slide_id}/{{m}}/{{c}}/{{{{Z}}}}/{{{{X}}}}/{{{{Y}}}}.png"
        sources = {f"{m}/{c}": source(url.format(m=m, c=c)) for m in maps for c in CMAPS}
        overlay = plot.add_tile(sources[f"{maps[0]}/{CMAPS[0]}"], alpha=0.5)
        layers["score overlay"] = overlay
        pick_map = Select(title="score map", value=maps[0], options=maps)
        pick_cmap = Select(title="colour map", value=CMAPS[0], options=list(CMAPS))
        mapper = LinearColorMapper(palette=colour_hex(CMAPS[0]), low=0, high=100)
        bar_title = "{}: percentile of the patch's score within this slide (0 lowest, 100 highest)"
        colour_bar = ColorBar(
            color_mapper=mapper, orientation="horizontal", title=bar_title.format(maps[0]), height=12,
            name="colour-bar", title_text_font_size="12px",
        )  # fmt: skip
        plot.add_layout(colour_bar, "above")
        grid = data.scores(slide_id)
        options, boxes = [], {"x": [], "y": [], "size": [], "colour": [], "which": []}
        top_colour, bottom_colour = marker_colours(CMAPS[0])
        for which, colour in (("top", top_colour), ("bottom", bottom_colour)):
            for rank, p in enumerate(grid.extremes(maps[0], 8)[which], start=1):
                options.append((str(len(boxes["x"])), f"{which} {rank}: {maps[0]} {p['score']:.4g}"))
                boxes["x"].append(p["x"] + p["size"] / 2)
                boxes["y"].append(-(p["y"] + p["size"] / 2))
                boxes["size"].append(p["size"])
                boxes["colour"].append(colour)
                boxes["which"].append(which)
        markers = ColumnDataSource(boxes)
        pick = CustomJS(
            args=dict(renderer=overlay, sources=sources, m=pick_map, c=pick_cmap, mapper=mapper, bar=colour_bar,
                      palettes={c: colour_hex(c) for c in CMAPS}, marks={c: marker_colours(c) for c in CMAPS},
                      src=markers, title=bar_title),
            code="""renderer.tile_source = sources[m.value + '/' + c.value];
mapper.palette = palettes[c.value]; bar.title = title.replace('{}', m.value);
const [top, bottom] = marks[c.value], d = src.data;
src.data = {...d, colour: d.which.map(w => w === 'top' ? top : bottom)};""",
        )  # fmt: skip
        pick_map.js_on_change("value", pick)
        pick_cmap.js_on_change("value", pick)
        opacity = Slider(title="opacity", start=0, end=1, step=0.05, value=0.5)
        opacity.js_on_change("value", CustomJS(args=dict(renderer=overlay), code="renderer.alpha = cb_obj.value;"))
        widgets += [pick_map, pick_cmap, opacity]
        layers["top/bottom markers"] = plot.rect(
            "x", "y", "size", "size", source=markers, fill_alpha=0, line_color="colour", line_width=3
        )
        jump = Select(title="jump to a top/bottom patch", value="", options=[("", "—"), *options])
        jump.js_on_change(
            "value",
            CustomJS(
                args=dict(src=markers, xr=plot.x_range, yr=plot.y_range),
                code="""const i = Number(cb_obj.value); if (cb_obj.value === '') return;
const d = src.data, x = d.x[i], y = d.y[i], w = 6 * d.size[i];
const h = w * (yr.end - yr.start) / (xr.end - xr.start);
xr.setv({start: x - w / 2, end: x + w / 2}); yr.setv({start: y - h / 2, end: y + h / 2});""",
            ),
        )
        widgets.append(jump)
    if layers:
        names = list(layers)
        toggle = CheckboxGroup(labels=names, active=list(range(len(names))))
        toggle.js_on_change(
            "active",
            CustomJS(
                args=dict(renderers=[layers[n] for n in names]),
                code="renderers.forEach((r, i) => { r.visible = cb_obj.active.includes(i); });",
            ),
        )
        widgets.append(toggle)
    if not maps:
        widgets.append(Div(text="<i>no heatmap scores for this slide</i>"))
    return row(plot, column(*widgets, width=240), sizing_mode="stretch_width")


def create_app(
    data: ReviewData, host: str = "127.0.0.1", port: int = 8765, access_token: str | None = None
) -> Starlette:
    """The review application over one results folder, for a server bound to ``host``:``port``."""
    from bokeh.embed import components
    from bokeh.resources import Resources
    from bokeh.util.paths import static_path

    check_bind(host, access_token)
    bokeh_js = Resources(mode="server", root_url=BOKEH_PREFIX).render_js()
    write_token = secrets.token_urlsafe(32)  # per start: a page from an earlier start reloads before it writes

    def cohort(request: Request) -> HTMLResponse:
        summary = _verdict_summary(data)
        rows = [{**r, "verdicts": summary.get(r["slide_id"], "")} for r in data.cohort()]
        run = "/".join(data.run) if data.run else "no evaluation found"
        page = _env.get_template("review_cohort.html")
        return HTMLResponse(page.render(rows=rows, results=str(data.results), run=run))

    def viewer(request: Request) -> HTMLResponse:
        sid = request.path_params["slide_id"]
        entry = data.entry(sid)
        script, div = components(viewer_layout(data, sid))
        order = [r["slide_id"] for r in data.cohort() if r["viewable"]]
        html = _env.get_template("review_viewer.html").render(
            entry=entry, bokeh_js=bokeh_js + script, bokeh_div=div, verdicts=VERDICTS,
            maps=data.maps(sid), order=order, write_token=write_token, token_header=WRITE_TOKEN_HEADER,
        )  # fmt: skip
        return HTMLResponse(html)

    def tile(request: Request) -> Response:
        p = request.path_params
        body = data.slide(p["slide_id"]).tile(p["z"], p["x"], p["y"])
        return Response(body, media_type="image/jpeg", headers=CACHE)

    def overlay(request: Request) -> Response:
        p = request.path_params
        slide = data.slide(p["slide_id"])
        grid = data.scores(p["slide_id"])
        body = grid.tile(p["map"], p["cmap"], p["z"], p["x"], p["y"], slide.max_level)
        return Response(body, media_type="image/png", headers=CACHE)

    def thumbnail(request: Request) -> Response:
        body = data.thumbnail_jpeg(request.path_params["slide_id"])
        return Response(body, media_type="image/jpeg", headers=CACHE)

    def verdicts(request: Request) -> JSONResponse:
        return JSONResponse(data.slide_verdicts(request.path_params["slide_id"]))

    async def save_verdict(request: Request) -> JSONResponse:
        sid = request.path_params["slide_id"]
        check_write(request, write_token)
        body = parse_json(await read_body(request))
        if not isinstance(body, dict) or not all(isinstance(body.get(k, ""), str) for k in ("verdict", "note")):
            raise BadRequest("expected a JSON object with reviewer, verdict, note")
        reviewer, verdict, note = str(body.get("reviewer", "")), body.get("verdict", ""), body.get("note", "")
        row = await run_in_threadpool(data.save_verdict, sid, reviewer, verdict, note)  # file lock and I/O
        return JSONResponse(row)

    async def not_found(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("not found", status_code=404)

    async def bad_request(request: Request, exc: Exception) -> Response:
        return PlainTextResponse(f"bad request: {exc}", status_code=400)

    async def busy(request: Request, exc: Exception) -> Response:
        return PlainTextResponse(f"busy: {exc}", status_code=503)

    async def refused(request: Request, exc: Exception) -> Response:
        return PlainTextResponse(str(exc), status_code=getattr(exc, "status", 403))

    def css(request: Request) -> FileResponse:
        return FileResponse(TEMPLATES / "review.css", media_type="text/css")

    routes = [
        Route("/", cohort),
        Route("/review.css", css),
        Route("/slide/{slide_id}", viewer),
        Route("/tile/{slide_id}/{z:int}/{x:int}/{y:int}.jpg", tile),
        Route("/overlay/{slide_id}/{map}/{cmap}/{z:int}/{x:int}/{y:int}.png", overlay),
        Route("/thumb/{slide_id}", thumbnail),
        Route("/api/verdicts/{slide_id}", verdicts),
        Route("/api/verdict/{slide_id}", save_verdict, methods=["POST"]),
        Mount(BOKEH_PREFIX + "static", StaticFiles(directory=static_path()), name="bokeh"),
    ]
    handlers = {NotFound: not_found, 404: not_found, BadRequest: bad_request, Busy: busy, Refused: refused}
    middleware = [
        Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(host)),  # DNS rebinding
        Middleware(AccessTokenGate, token=access_token, cookie=f"mambamil_review_{port}"),
        Middleware(GZipMiddleware, minimum_size=1000, compresslevel=6),  # images are sent as they are
    ]
    return Starlette(routes=routes, exception_handlers=handlers, middleware=middleware)


def serve(data: ReviewData, host: str = HOST, port: int = PORT) -> None:
    """Run the review server until interrupted; the access token comes from ``MAMBAMIL_REVIEW_TOKEN``."""
    import uvicorn

    token = os.environ.get(TOKEN_ENV) or None
    app = create_app(data, host=host, port=port, access_token=token)
    shown = f"[{host}]" if ":" in host else host
    query = f"?token={token}" if token else ""
    print(f"mambamil review: http://{shown}:{port}/{query}  ({len(data.slides)} slides, {data.results})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
