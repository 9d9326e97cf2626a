"""The review web server (Starlette + uvicorn): cohort page, Bokeh deep-zoom slide viewer, tiles, verdicts.

URLs carry slide ids, map names and tile numbers only; each is looked up in :class:`mambamil.review.ReviewData`
(unknown → 404, malformed tile numbers → 400). BokehJS is served from the installed ``bokeh`` package, so the
pages work offline (no CDN).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mambamil.review import CMAPS, HOST, PORT, TILE, VERDICTS, BadRequest, NotFound, ReviewData

BOKEH_PREFIX = "/bokeh/"
#: Browsers may cache tiles for an hour (they change only when the results are redrawn).
CACHE = {"Cache-Control": "private, max-age=3600"}

TEMPLATES = Path(__file__).parent / "templates"
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined)


def _verdict_summary(data: ReviewData) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    for (sid, reviewer), row in sorted(data.verdicts.items()):
        out.setdefault(sid, []).append(f"{row['verdict'] or '–'} ({reviewer})")
    return {sid: ", ".join(v) for sid, v in out.items()}


def viewer_layout(data: ReviewData, slide_id: str) -> Any:
    """The Bokeh document of one slide: deep-zoom slide tiles, score overlay tiles, tissue contours, top/bottom-k
    markers, and widgets for the map, colour map, opacity, layers and jumping to a marker."""
    from bokeh.layouts import column, row
    from bokeh.models import CheckboxGroup, ColumnDataSource, CustomJS, Div, Select, Slider, WMTSTileSource
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
    )  # fmt: skip
    plot.axis.visible = False
    plot.grid.visible = False
    plot.add_tile(source(f"/tile/{slide_id}/{{Z}}/{{X}}/{{Y}}.jpg"))
    widgets: list[Any] = []
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
        pick = CustomJS(
            args=dict(renderer=overlay, sources=sources, m=pick_map, c=pick_cmap),
            code="renderer.tile_source = sources[m.value + '/' + c.value];",
        )
        pick_map.js_on_change("value", pick)
        pick_cmap.js_on_change("value", pick)
        opacity = Slider(title="opacity", start=0, end=1, step=0.05, value=0.5)
        opacity.js_on_change("value", CustomJS(args=dict(renderer=overlay), code="renderer.alpha = cb_obj.value;"))
        widgets += [pick_map, pick_cmap, opacity]
        grid = data.scores(slide_id)
        options, boxes = [], {"x": [], "y": [], "size": [], "colour": []}
        for which, colour in (("top", "#d50000"), ("bottom", "#2962ff")):
            for rank, p in enumerate(grid.extremes(maps[0], 8)[which], start=1):
                options.append((str(len(boxes["x"])), f"{which} {rank}: {maps[0]} {p['score']:.4g}"))
                boxes["x"].append(p["x"] + p["size"] / 2)
                boxes["y"].append(-(p["y"] + p["size"] / 2))
                boxes["size"].append(p["size"])
                boxes["colour"].append(colour)
        markers = ColumnDataSource(boxes)
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


def create_app(data: ReviewData) -> Starlette:
    """The review application over one results folder."""
    from bokeh.embed import components
    from bokeh.resources import Resources
    from bokeh.util.paths import static_path

    bokeh_js = Resources(mode="server", root_url=BOKEH_PREFIX).render_js()

    async def cohort(request: Request) -> HTMLResponse:
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
            maps=data.maps(sid), order=order,
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

    def thumbnail(request: Request) -> FileResponse:
        return FileResponse(data.thumbnail(request.path_params["slide_id"]), media_type="image/png", headers=CACHE)

    def verdicts(request: Request) -> JSONResponse:
        return JSONResponse(data.slide_verdicts(request.path_params["slide_id"]))

    async def save_verdict(request: Request) -> JSONResponse:
        sid = request.path_params["slide_id"]
        data.entry(sid)
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            raise BadRequest("body is not JSON") from exc
        if not isinstance(body, dict) or not all(isinstance(body.get(k, ""), str) for k in ("verdict", "note")):
            raise BadRequest("expected a JSON object with reviewer, verdict, note")
        row = data.save_verdict(sid, str(body.get("reviewer", "")), body.get("verdict", ""), body.get("note", ""))
        return JSONResponse(row)

    async def not_found(request: Request, exc: Exception) -> Response:
        return Response("not found", status_code=404, media_type="text/plain")

    async def bad_request(request: Request, exc: Exception) -> Response:
        return Response(f"bad request: {exc}", status_code=400, media_type="text/plain")

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
    handlers = {NotFound: not_found, BadRequest: bad_request, 404: not_found}
    return Starlette(routes=routes, exception_handlers=handlers)


def serve(data: ReviewData, host: str = HOST, port: int = PORT) -> None:
    """Run the review server until interrupted."""
    import uvicorn

    print(f"mambamil review: http://{host}:{port}/  ({len(data.slides)} slides, {data.results})", flush=True)
    uvicorn.run(create_app(data), host=host, port=port, log_level="warning")
