"""Review server: bytes of the cohort page (thumbnails, compression); p50/p95 latency of 256-px slide and
score-overlay tiles over HTTP, warm slide cache.

Cohort page (``--page``, first): the demo cohort (``mambamil demo-cohort``'s default 24 slides, 4608 × 3584 px;
``--quick``: 6) tiled by the tile stage, served; the page and every thumbnail it shows are fetched as a browser
does (``Accept-Encoding: gzip``). Baseline, in the same run: what the server sent before thumbnails were
downscaled and responses compressed, i.e. the page uncompressed and each slide's full ``.preview.png``.

Runs ``mambamil review``'s application (uvicorn, in this process's thread) on a temporary results folder made
by the tile stage on CMU-1-Small-Region.svs and a large demo slide (16384 × 12288 px), with per-patch scores in
the heatmap stage's format. Requests distinct random tiles of the deepest pyramid levels over one keep-alive
connection after a warm-up that opens the slide. Baselines, measured in the same run on the same tiles:
slide tile with a fresh ``OpenSlide`` + ``DeepZoomGenerator`` per tile (no slide cache); overlay tile drawn by
the heatmap stage's renderer (``mambamil.heatmaps.render_heatmap``) for the tile's area.

    python benchmarks/review.py [--quick] [--slide PATH] [--page-only | --no-page]
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import openslide
import pandas as pd
from openslide.deepzoom import DeepZoomGenerator

from mambamil import demo, paths
from mambamil.cli import main as cli
from mambamil.h5layout import read_coords
from mambamil.heatmaps import HeatmapSettings, rank_percentiles, render_heatmap
from mambamil.review import THUMB_PX, ReviewData
from mambamil.review_server import create_app

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SLIDE = Path(os.environ.get("MAMBAMIL_TEST_SLIDE", SHARED / "CMU-1-Small-Region.svs"))


def build_results(root: Path, slides: dict[str, Path]) -> Path:
    res = root / "results"
    tiles = paths.tiles_dir(res)
    assert cli(["--quiet", "tile", *map(str, slides.values()), "--slide-id", *slides, "--out", str(tiles)]) == 0
    for sid in slides:
        coords = read_coords(tiles / f"{sid}.h5").coords
        score = np.random.default_rng(0).random(len(coords))
        table = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1], "attention": score})
        table["attention_percentile"] = rank_percentiles(score)
        out = paths.heatmap_outputs(paths.heatmap_dir(res, sid), sid)["scores"]
        out.parent.mkdir(parents=True)
        table.to_csv(out, index=False)
    return res


def start_server(res: Path) -> int:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ReviewData(res)), port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return port


def sample_tiles(path: Path, n: int, seed: int) -> list[tuple[int, int, int]]:
    """Distinct (level, col, row) tiles inside the slide, from the 4 deepest levels."""
    dz = DeepZoomGenerator(openslide.OpenSlide(str(path)), tile_size=256, overlap=0, limit_bounds=False)
    pool = [(z, c, r) for z in range(dz.level_count - 4, dz.level_count) for c in range(dz.level_tiles[z][0])
            for r in range(dz.level_tiles[z][1])]  # fmt: skip
    random.Random(seed).shuffle(pool)
    return pool[:n]


def fetch(conn: http.client.HTTPConnection, url: str) -> float:
    t0 = time.perf_counter()
    conn.request("GET", url)
    resp = conn.getresponse()
    body = resp.read()
    dt = time.perf_counter() - t0
    assert resp.status == 200 and body, (url, resp.status)
    return dt


def baseline_slide_tile(path: Path, z: int, c: int, r: int) -> float:
    t0 = time.perf_counter()
    dz = DeepZoomGenerator(openslide.OpenSlide(str(path)), tile_size=256, overlap=0, limit_bounds=False)
    rgb = np.asarray(dz.get_tile(z, (c, r)).convert("RGB"))
    cv2.imencode(".jpg", rgb[..., ::-1])
    return time.perf_counter() - t0


def baseline_overlay_tile(res: Path, sid: str, path: Path, z: int, c: int, r: int, top: int) -> float:
    t0 = time.perf_counter()
    scores = pd.read_csv(paths.heatmap_outputs(paths.heatmap_dir(res, sid), sid)["scores"])
    meta = read_coords(paths.tiles_dir(res) / f"{sid}.h5")
    down = 2.0 ** (top - z)
    x0, y0 = c * 256 * down, r * 256 * down
    coords = scores[["x", "y"]].to_numpy() - [x0, y0]
    mpp = 0.5
    settings = HeatmapSettings.from_config(mpp=mpp * down, alpha=1.0)
    img = render_heatmap(coords, scores["attention_percentile"].to_numpy(), meta.patch_size_level0,
                         (256 * down, 256 * down), mpp, settings)  # fmt: skip
    cv2.imencode(".png", img)
    return time.perf_counter() - t0


def get(conn: http.client.HTTPConnection, url: str, gzip: bool) -> bytes:
    conn.request("GET", url, headers={"Accept-Encoding": "gzip"} if gzip else {})
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, (url, resp.status)
    return body


def cohort_page_bytes(tmp: Path, n_slides: int) -> None:
    """The cohort page's bytes on the wire, as served now and as the previous server sent them."""
    cohort = tmp / "cohort"
    t0 = time.perf_counter()
    demo.generate_cohort(cohort, n_slides=n_slides, progress=False)
    ids = demo.slide_ids(n_slides)
    res = tmp / "page-results"
    tiles = paths.tiles_dir(res)
    args = [str(demo.slide_path(cohort, s)) for s in ids]
    assert cli(["--quiet", "tile", *args, "--slide-id", *ids, "--out", str(tiles)]) == 0
    print(f"demo cohort of {n_slides} slides made and tiled in {time.perf_counter() - t0:.1f} s")
    port = start_server(res)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    page_plain, page_gzip = get(conn, "/", gzip=False), get(conn, "/", gzip=True)
    thumbs = [get(conn, f"/thumb/{sid}", gzip=True) for sid in ids]
    t0 = time.perf_counter()
    for sid in ids:  # warm (cached) thumbnails
        get(conn, f"/thumb/{sid}", gzip=True)
    warm_ms = (time.perf_counter() - t0) / len(ids) * 1000
    conn.close()
    previews = [paths.tile_outputs(tiles, sid)["preview"].stat().st_size for sid in ids]
    before = {"page HTML": len(page_plain), "thumbnails": sum(previews)}
    after = {"page HTML": len(page_gzip), "thumbnails": sum(map(len, thumbs))}
    before["total"], after["total"] = sum(before.values()), sum(after.values())
    print(f"\ncohort page of {n_slides} demo slides (thumbnails ≤ {THUMB_PX} px JPEG; warm thumbnail {warm_ms:.1f} ms)")
    print()
    print("| part | before (bytes) | after (bytes) | before ÷ after |")
    print("|---|---|---|---|")
    for part in before:
        print(f"| {part} | {before[part]:,} | {after[part]:,} | {before[part] / after[part]:.1f}× |")
    print(f"\nbefore: {before['total'] / 2**20:.1f} MiB, after: {after['total'] / 2**20:.2f} MiB\n")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer tiles, smaller large slide (8192 × 6144)")
    ap.add_argument("--slide", type=Path, default=SLIDE, help="the real slide (default: %(default)s)")
    ap.add_argument("--n", type=int, default=200, help="tiles per slide and kind (default: %(default)s)")
    ap.add_argument("--page-only", action="store_true", help="only the cohort page's bytes")
    ap.add_argument("--no-page", action="store_true", help="only the tile latencies")
    args = ap.parse_args()
    n = 60 if args.quick else args.n
    size = (8192, 6144) if args.quick else (16384, 12288)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.no_page:
            cohort_page_bytes(tmp, 6 if args.quick else 24)
        if args.page_only:
            return
        t0 = time.perf_counter()
        spec = demo.cohort_specs(1, seed=5, size=size)[0]
        rgb, _, _ = demo.render_slide(spec)
        big = tmp / "big.tiff"
        demo.write_pyramidal_tiff(big, rgb, demo.DEMO_MPP)
        del rgb
        slides = {"cmu1": args.slide, "big": big}
        res = build_results(tmp, slides)
        print(f"results folder built in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs\n")
        port = start_server(res)
        print("| slide | tiles | kind | p50 ms | p95 ms | baseline p50 ms | baseline p95 ms | baseline ÷ ours (p50) |")
        print("|---|---|---|---|---|---|---|---|")
        for sid, path in slides.items():
            top = DeepZoomGenerator(openslide.OpenSlide(str(path)), 256, 0).level_count - 1
            tiles = sample_tiles(path, n, seed=1)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)  # keep-alive, new per slide
            fetch(conn, f"/tile/{sid}/{top}/0/0.jpg")  # warm-up: opens the slide and builds the score grid
            fetch(conn, f"/overlay/{sid}/attention/jet/{top}/0/0.png")
            ours = {
                "slide": [fetch(conn, f"/tile/{sid}/{z}/{c}/{r}.jpg") for z, c, r in tiles],
                "overlay": [fetch(conn, f"/overlay/{sid}/attention/jet/{z}/{c}/{r}.png") for z, c, r in tiles],
            }
            conn.close()
            base = {
                "slide": [baseline_slide_tile(path, z, c, r) for z, c, r in tiles],
                "overlay": [baseline_overlay_tile(res, sid, path, z, c, r, top) for z, c, r in tiles],
            }
            name = f"{path.name} ({openslide.OpenSlide(str(path)).dimensions[0]}×"
            name += f"{openslide.OpenSlide(str(path)).dimensions[1]})"
            for kind in ("slide", "overlay"):
                a, b = ours[kind], base[kind]
                ratio = statistics.median(b) / statistics.median(a)
                print(f"| {name} | {len(a)} | {kind} | {pct(a, 50):.1f} | {pct(a, 95):.1f} | {pct(b, 50):.1f} | "
                      f"{pct(b, 95):.1f} | {ratio:.1f}× |")  # fmt: skip


if __name__ == "__main__":
    main()
