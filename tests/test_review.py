"""`mambamil review`: the review server over a small results folder, over real HTTP and in headless Chromium.

The results folder is built from real stage outputs the tests make quickly: the tile stage on two demo slides,
the real Aperio slide and an empty file (a QC stub), the qc stage's tables; heatmap scores, predictions and the
evaluation table are written in those stages' formats (no training: the server only reads them).
"""

from __future__ import annotations

import colorsys
import functools
import http.client
import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import openslide
import pandas as pd
import pytest
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from mambamil import paths
from mambamil.cli import main
from mambamil.demo import slide_path
from mambamil.fileio import write_json
from mambamil.h5layout import read_coords
from mambamil.heatmaps import colour_lut, rank_percentiles
from mambamil.review import CMAPS, THUMB_PX, marker_colours
from mambamil.review_server import MAX_BODY, TOKEN_ENV, WRITE_TOKEN_HEADER

REPO = Path(__file__).resolve().parents[1]
IDS = ["demo_000", "demo_001", "cmu1", "blank"]
#: Tests on the served folder (a tile run and server start-ups, ~1-2 min on 2 cores in all) are slow.
slow = pytest.mark.slow


def _run(*args: object) -> None:
    assert main(["--quiet", *[str(a) for a in args]]) == 0, args


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, demo_cohort: Path, real_slide: Path) -> Path:
    root = tmp_path_factory.mktemp("review")
    res = root / "results"
    (root / "blank.svs").write_bytes(b"")
    files = {"demo_000": slide_path(demo_cohort, "demo_000"), "demo_001": slide_path(demo_cohort, "demo_001")}
    files.update(cmu1=real_slide, blank=root / "blank.svs")
    cases = {"demo_000": "case_a", "demo_001": "case_b", "cmu1": "case_c", "blank": "case_d"}
    sheet = pd.DataFrame({"slide_id": IDS, "path": [str(files[s]) for s in IDS], "case_id": [cases[s] for s in IDS]})
    sheet.to_csv(root / "slides.csv", index=False)
    tiles = paths.tiles_dir(res)
    _run("tile", *[files[s] for s in IDS], "--slide-id", *IDS, "--out", tiles, "--on-bad-slide", "exclude")
    _run("qc", "--slides", root / "slides.csv", "--stage-file", tiles / "{slide_id}.h5", "--out", paths.qc_dir(res))
    labels = {"demo_000": "tumor", "demo_001": "normal", "cmu1": "tumor"}
    preds, index = [], []
    for fold, sid in enumerate(["demo_000", "demo_001", "cmu1"]):
        coords = read_coords(tiles / f"{sid}.h5").coords
        attention = coords[:, 0] + 0.001 * coords[:, 1]  # grows to the right: a known pattern
        table = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1], "attention": attention})
        table["attention_percentile"] = rank_percentiles(attention)
        table["gradxinput"] = -attention
        table["gradxinput_percentile"] = rank_percentiles(-attention)
        out = paths.heatmap_outputs(paths.heatmap_dir(res, sid), sid)
        out["scores"].parent.mkdir(parents=True)
        table.to_csv(out["scores"], index=False)
        prob = [0.9, 0.8, 0.3][fold]
        pred = {"prob_normal": 1 - prob, "prob_tumor": prob, "predicted": "tumor" if prob > 0.5 else "normal"}
        write_json(out["prediction"], pred)
        preds.append({"fold": fold, "case_id": cases[sid], "label": labels[sid], **pred})
        index.append((sid, "drawn", str(out["attention"])))
    index.append(("blank", "excluded by QC at tile: file is empty (0 bytes)", ""))
    pd.DataFrame(index, columns=["slide_id", "status", "attention_png"]).to_csv(paths.heatmaps_index(res), index=False)
    evaluation = paths.evaluation_outputs(paths.evaluation_dir(res, "subtype", "mambamil"))["predictions"]
    evaluation.parent.mkdir(parents=True)
    pd.DataFrame(preds).to_csv(evaluation, index=False)
    # Other runs of the study: the cohort page must take the heatmaps' own (closest predictions), not these.
    other = pd.DataFrame(preds).assign(fold=lambda d: d["fold"] + 10, prob_tumor=lambda d: 1 - d["prob_tumor"])
    for task, model in (("subtype", "abmil"), ("survival", "mambamil")):
        path = paths.evaluation_outputs(paths.evaluation_dir(res, task, model))["predictions"]
        path.parent.mkdir(parents=True)
        (other if task == "subtype" else other[["fold", "case_id"]].assign(risk=0.5)).to_csv(path, index=False)
    # A slide whose files link out of the results folder: its preview is a symlink to a file outside.
    shutil.copy(tiles / "demo_000.h5", tiles / "linked.h5")
    (root / "secret.png").write_bytes(b"SECRET outside the results folder")
    (tiles / "linked.preview.png").symlink_to(root / "secret.png")
    # ... and its prediction is a symlink to a file outside: the cohort table must not show what it says.
    (root / "secret.json").write_text(json.dumps({"predicted": "SECRET", "prob_SECRET": 1.0}))
    linked = paths.heatmap_outputs(paths.heatmap_dir(res, "linked"), "linked")["prediction"]
    linked.parent.mkdir(parents=True)
    linked.symlink_to(root / "secret.json")
    return res


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m mambamil review` in a subprocess, as a user starts it."""

    def __init__(self, results: Path, env: dict[str, str] | None = None) -> None:
        self.results, self.port = results, _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        cmd = [sys.executable, "-m", "mambamil", "review", str(results), "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stdout.read()}")
            try:
                urllib.request.urlopen(self.base + "/", timeout=5)
                return
            except urllib.error.HTTPError:
                return  # answering (401 without its access token)
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        raise AssertionError("server did not start")

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        """A raw request (the path is sent as written, not normalised); the response's headers lower-cased."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, data, {k.lower(): v for k, v in resp.getheaders()}

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
        status, body, head = self.request("GET", path, headers=headers)
        return status, body, head.get("content-type", "")

    @functools.cached_property
    def write_token(self) -> str:
        """The per-start write token, as the viewer page embeds it."""
        page = self.get("/slide/demo_000")[1].decode()
        return re.search(r'name="mambamil-write-token" content="([^"]+)"', page).group(1)

    def post(self, path: str, obj: object, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """A verdict write as the viewer page sends it (JSON, its write token), with ``headers`` on top."""
        sent = {"Content-Type": "application/json", WRITE_TOKEN_HEADER: self.write_token, **(headers or {})}
        status, body, _ = self.request("POST", path, json.dumps(obj).encode(), sent)
        return status, body

    def kill(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(30)


@pytest.fixture(scope="module")
def server(results: Path):
    srv = Server(results)
    yield srv
    srv.kill()


@slow
def test_cohort_page_lists_every_slide(server: Server) -> None:
    status, body, _ = server.get("/")
    assert status == 200
    page = body.decode()
    rows = json.loads(page.split("const ROWS = ", 1)[1].split(";\n", 1)[0])
    by_id = {r["slide_id"]: r for r in rows}
    assert set(by_id) == {*IDS, "linked"}
    a, b, c = by_id["demo_000"], by_id["demo_001"], by_id["cmu1"]
    assert (a["label"], a["predicted"], a["score"], a["fold"], a["correct"]) == ("tumor", "tumor", 0.9, "0", "yes")
    assert (b["predicted"], b["correct"], b["case_id"]) == ("tumor", "no", "case_b")
    assert (c["predicted"], c["correct"], c["score"]) == ("normal", "no", 0.7)
    blank = by_id["blank"]
    assert blank["qc_status"] == "excluded" and "empty" in blank["qc_cause"] and not blank["viewable"]
    assert "subtype/mambamil" in page
    # linked's prediction.json links out of the results folder: not read (the slide has no prediction).
    assert "SECRET" not in page and by_id["linked"]["predicted"] == ""


@slow
def test_slide_and_overlay_tiles(server: Server, results: Path, real_slide: Path) -> None:
    osr = openslide.OpenSlide(str(real_slide))
    top = DeepZoomGenerator(osr, tile_size=256, overlap=0, limit_bounds=False).level_count - 1
    status, body, ctype = server.get(f"/tile/cmu1/{top}/1/2.jpg")
    assert status == 200 and ctype == "image/jpeg"
    tile = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    expected = np.asarray(osr.read_region((256, 512), 0, (256, 256)).convert("RGB"))
    assert tile.shape == (256, 256, 3) and np.abs(tile.astype(int) - expected).mean() < 6
    # The right edge tile is padded to 256 px with white, so the viewer never stretches it.
    w = osr.dimensions[0]
    status, body, _ = server.get(f"/tile/cmu1/{top}/{w // 256}/0.jpg")
    edge = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert edge.shape == (256, 256, 3) and (edge[:, w % 256 + 4 :] > 245).all()
    # Overlay: each patch coloured by its percentile through the colour map, transparent where there is none.
    scores = pd.read_csv(paths.heatmap_outputs(paths.heatmap_dir(results, "cmu1"), "cmu1")["scores"])
    lut = colour_lut("viridis")
    patch = scores.iloc[len(scores) // 2]
    size = read_coords(paths.tiles_dir(results) / "cmu1.h5").patch_size_level0
    cx, cy = int(patch.x + size / 2), int(patch.y + size / 2)
    status, body, ctype = server.get(f"/overlay/cmu1/attention/viridis/{top}/{cx // 256}/{cy // 256}.png")
    assert status == 200 and ctype == "image/png"
    rgba = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (256, 256, 4)
    assert rgba[cy % 256, cx % 256, 3] == 255
    index = round(patch.attention_percentile * 254)  # 255 palette colours, index 255 transparent
    assert rgba[cy % 256, cx % 256, 2::-1].tolist() == lut[round(index * 255 / 254)].tolist()
    # Far below the slide: no patch, fully transparent.
    status, body, _ = server.get(f"/overlay/cmu1/gradxinput/jet/{top}/0/{2**top - 1}.png")
    assert status == 200 and (cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)[..., 3] == 0).all()


@slow
@pytest.mark.parametrize(
    ("path", "codes"),
    [
        ("/thumb/../../etc/passwd", {404}),
        ("/thumb/..%2F..%2F..%2Fetc%2Fpasswd", {404}),
        ("/thumb/%2Fetc%2Fpasswd", {404}),
        ("/thumb//etc/passwd", {404}),
        ("/thumb/linked", {404}),  # a symlink out of the results folder
        ("/thumb/nope", {404}),
        ("/slide/nope", {404}),
        ("/slide/blank", {404}),  # excluded by QC: no slide to show
        ("/slide/..%2Ftiles%2Fdemo_000", {404}),
        ("/tile/nope/0/0/0.jpg", {404}),
        ("/tile/demo_000/99/0/0.jpg", {400}),
        ("/tile/demo_000/2/4/0.jpg", {400}),
        ("/tile/demo_000/2/-1/0.jpg", {404}),
        ("/tile/demo_000/a/0/0.jpg", {404}),
        ("/overlay/demo_000/nope/jet/0/0/0.png", {404}),
        ("/overlay/demo_000/attention/..%2F..%2Fetc/0/0/0.png", {404}),
        ("/overlay/demo_000/attention/not_a_cmap/0/0/0.png", {404}),
        ("/api/verdicts/nope", {404}),
        ("/results/tiles/demo_000.h5", {404}),
        ("/bokeh/static/../../../../etc/passwd", {404}),
        ("/bokeh/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", {404}),
    ],
)
def test_nothing_outside_the_results_folder(server: Server, path: str, codes: set[int]) -> None:
    status, body, _ = server.get(path)
    assert status in codes, (path, status, body[:200])
    assert b"root:" not in body and b"SECRET" not in body


@slow
def test_thumbnails_downscaled_pages_compressed_bokeh_offline(server: Server, results: Path) -> None:
    status, body, ctype = server.get("/thumb/demo_000")
    assert status == 200 and ctype == "image/jpeg"
    preview_file = paths.tile_outputs(paths.tiles_dir(results), "demo_000")["preview"]
    thumb, preview = Image.open(io.BytesIO(body)), Image.open(preview_file)
    assert max(thumb.size) == THUMB_PX and len(body) < preview_file.stat().st_size / 4
    assert abs(thumb.size[0] / thumb.size[1] - preview.size[0] / preview.size[1]) < 0.02
    small = np.asarray(preview.convert("RGB").resize(thumb.size, Image.Resampling.BOX), np.int32)
    assert np.abs(np.asarray(thumb, np.int32) - small).mean() < 12  # the same picture, smaller
    status, body, head = server.request("GET", "/", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and head.get("content-encoding") == "gzip"
    status, body, _ = server.get("/slide/demo_000")
    js = [p.split('"')[0] for p in body.decode().split('src="')[1:] if p.startswith("/bokeh/")]
    assert js and all(server.get(p)[0] == 200 for p in js)


@slow
def test_verdict_survives_kill_9(results: Path) -> None:
    srv = Server(results)
    try:
        assert srv.post("/api/verdict/demo_001", {"reviewer": "ann", "verdict": "bogus", "note": ""})[0] == 400
        assert srv.post("/api/verdict/nope", {"reviewer": "ann", "verdict": "agree", "note": ""})[0] == 404
        assert srv.post("/api/verdict/demo_001", {"reviewer": "", "verdict": "agree", "note": ""})[0] == 400
        status, _ = srv.post("/api/verdict/demo_001", {"reviewer": "ann", "verdict": "artefact", "note": "pen, fold"})
        assert status == 200
        status, _ = srv.post("/api/verdict/demo_001", {"reviewer": "bob", "verdict": "agree", "note": "ok"})
        assert status == 200
    finally:
        srv.kill(signal.SIGKILL)
    table = pd.read_csv(paths.verdicts_file(results), keep_default_na=False)
    table = table[table["reviewer"].isin(["ann", "bob"])]
    assert table[["slide_id", "reviewer", "verdict", "note"]].values.tolist() == [
        ["demo_001", "ann", "artefact", "pen, fold"],
        ["demo_001", "bob", "agree", "ok"],
    ]
    left = {p.name for p in paths.review_dir(results).iterdir()} - {"verdicts.csv", paths.verdicts_lock(results).name}
    assert not left  # no temporary left
    again = Server(results)
    try:
        rows = json.loads(again.get("/api/verdicts/demo_001")[1])
        assert {(r["reviewer"], r["verdict"], r["note"]) for r in rows} == {
            ("ann", "artefact", "pen, fold"),
            ("bob", "agree", "ok"),
        }
    finally:
        again.kill()


@slow
def test_browser_cohort_viewer_and_verdict(server: Server, results: Path, browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    page.goto(server.base + "/")
    assert page.locator("#cohort tbody tr").count() == 5
    # Misclassified slides first; keyboard: j selects the next row, Enter opens it.
    assert page.locator("#cohort tbody tr").first.get_attribute("data-id") in ("demo_001", "cmu1")
    page.fill("#filter", "case_a")
    assert page.locator("#cohort tbody tr").count() == 1
    page.fill("#filter", "")
    page.evaluate("document.activeElement.blur()")  # keys typed in the filter box do not navigate
    page.keyboard.press("j")
    second = page.locator("#cohort tbody tr.sel").get_attribute("data-id")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/slide/{second}")
    page.goto(server.base + "/slide/cmu1")
    page.wait_for_load_state("networkidle")
    plot = page.locator(".bk-Canvas").first
    with_overlay = cv2.imdecode(np.frombuffer(plot.screenshot(), np.uint8), cv2.IMREAD_COLOR)
    page.get_by_text("score overlay").click()
    page.wait_for_timeout(500)
    without = cv2.imdecode(np.frombuffer(plot.screenshot(), np.uint8), cv2.IMREAD_COLOR)
    changed = np.abs(with_overlay.astype(int) - without.astype(int)).max(axis=2) > 30
    assert changed.mean() > 0.05, changed.mean()  # the overlay colours cover the tissue
    tissue = (without.astype(int).std(axis=2) > 10).mean()
    assert tissue > 0.05  # the slide itself is drawn
    # A verdict typed in the page is saved without pressing anything.
    page.fill("#reviewer", "carol")
    page.check("input[value=unsure]")
    page.fill("#note", "blurred corner")
    for _ in range(50):
        text = paths.verdicts_file(results).read_text() if paths.verdicts_file(results).exists() else ""
        if "blurred corner" in text:
            break
        time.sleep(0.2)
    assert "cmu1,carol,unsure,blurred corner" in text
    # Reading aids: a colour bar saying what a colour means, a scale bar, the view's µm/px, keyboard zoom.
    model = "Bokeh.documents[0].get_model_by_name"
    assert "percentile" in page.evaluate(f"{model}('colour-bar').title")
    assert page.evaluate(f"{model}('scale-bar') !== null")
    page.wait_for_function(f"{model}('view-mpp').text.startsWith('view: ')")
    mpp_text = page.evaluate(f"{model}('view-mpp').text")
    width = page.evaluate(f"(r => r.end - r.start)({model}('slide-view').x_range)")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("+")
    zoomed = page.evaluate(f"(r => r.end - r.start)({model}('slide-view').x_range)")
    assert zoomed == pytest.approx(width / 1.5)
    page.wait_for_function(f"{model}('view-mpp').text !== {json.dumps(mpp_text)}")  # the view's µm/px follows
    assert not problems, problems
    page.close()


def _wait_for(condition, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def other_site(tmp_path_factory: pytest.TempPathFactory):
    """A static web server on another local port: the page of another site the reviewer has open."""
    root = tmp_path_factory.mktemp("other_site")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


ATTACK = """<!doctype html><html><body>
<form id="f" method="POST" enctype="text/plain" action="{target}">
<input type="hidden" name='{{"reviewer":"mallory","verdict":"disagree","note":"' value='form"}}'></form>
<script>
fetch("{target}", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
  body: JSON.stringify({{reviewer: "mallory", verdict: "disagree", note: "no-cors fetch"}})}})
  .finally(() => document.getElementById("f").submit());
</script></body></html>"""


@slow
def test_browser_other_pages_cannot_write_verdicts(server: Server, results: Path, other_site, browser) -> None:
    """A page from another local port, or opened from a file, posts a no-cors text/plain fetch and a text/plain
    form (no JavaScript needed for the form) to the review server: the verdicts file stays as it was."""
    root, base = other_site
    target = f"{server.base}/api/verdict/demo_000"
    (root / "attack.html").write_text(ATTACK.format(target=target))
    before = _csv(results)
    context = browser.new_context()
    page = context.new_page()
    for url in (f"{base}/attack.html", (root / "attack.html").as_uri()):
        page.goto(url)
        page.wait_for_url(target)  # the form was submitted (after the fetch settled); its answer is shown
        assert _csv(results) == before, url
    assert b"mallory" not in _csv(results)
    context.close()


@slow
def test_browser_verdict_before_name_and_note_before_next_are_saved(server: Server, results: Path, browser) -> None:
    context = browser.new_context()  # no reviewer name remembered
    page = context.new_page()
    page.goto(server.base + "/slide/demo_000")
    page.check("input[value=artefact]")  # clicked before the name is typed
    assert page.inner_text("#status").startswith("unsaved")
    page.fill("#reviewer", "dana")
    page.press("#reviewer", "Tab")  # the name arrives: the pending verdict is saved
    _wait_for(lambda: b"demo_000,dana,artefact," in _csv(results), "verdict clicked before the name not saved")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('saved')")
    # The next page answers at once (it is not what is tested), so this page is gone well within 300 ms.
    page.route("**/slide/demo_001", lambda route: route.fulfill(content_type="text/html", body="<p>next</p>"))
    page.fill("#note", "pen mark top left")  # and "next" at once, within the 300 ms the note waits
    page.click("#next")
    page.wait_for_url("**/slide/demo_001")
    _wait_for(lambda: b"demo_000,dana,artefact,pen mark top left," in _csv(results), "note typed before next lost")
    context.close()


def _csv(results: Path) -> bytes:
    path = paths.verdicts_file(results)
    return path.read_bytes() if path.exists() else b""


VERDICT = {"reviewer": "mallory", "verdict": "disagree", "note": "written by another page"}


@slow
@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"Content-Type": "text/plain"}, 415),  # what a <form> or a no-cors fetch can send
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Origin": "http://127.0.0.1:1"}, 403),  # a page served from another local port
        ({"Origin": "null"}, 403),  # a page opened from a file
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({WRITE_TOKEN_HEADER: ""}, 403),  # no page token
        ({WRITE_TOKEN_HEADER: "a-token-of-an-earlier-start"}, 403),
    ],
)
def test_writes_need_json_same_origin_and_the_page_token(
    server: Server, results: Path, headers: dict[str, str], code: int
) -> None:
    before = _csv(results)
    status, body = server.post("/api/verdict/demo_000", VERDICT, headers)
    assert status == code, body
    assert _csv(results) == before
    # The same write from the server's own page is accepted.
    own = {"Origin": server.base, "Sec-Fetch-Site": "same-origin"}
    assert server.post("/api/verdict/demo_000", {**VERDICT, "reviewer": "own page"}, own)[0] == 200


@slow
def test_foreign_host_header_refused(server: Server, results: Path) -> None:
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 sends Host: evil.example."""
    assert server.post("/api/verdict/demo_000", {**VERDICT, "reviewer": "zoe", "note": "zoe's note"})[0] == 200
    before = _csv(results)
    for host in (f"evil.example:{server.port}", "evil.example", f"127.0.0.1.evil.example:{server.port}"):
        for path in ("/", "/api/verdicts/demo_000", "/slide/demo_000"):
            status, body, _ = server.get(path, headers={"Host": host})
            assert status == 400 and b"zoe" not in body, (host, path, status)
        status, _ = server.post("/api/verdict/demo_000", VERDICT, {"Host": host})
        assert status == 400
    assert _csv(results) == before
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}"):
        status, body, _ = server.get("/api/verdicts/demo_000", headers={"Host": host})
        assert status == 200 and b"zoe's note" in body


def _raw_post(port: int, head: bytes, body: bytes) -> bytes:
    """Send a request's head and as much body as given; the first bytes answered (the socket stays open)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(head + body)
        return sock.recv(200)


@slow
def test_request_bodies_capped_before_they_are_read(server: Server, results: Path) -> None:
    before = _csv(results)
    # 30 MB announced, 1 KB sent: refused at once, without waiting for the rest.
    head = (
        f"POST /api/verdict/demo_000 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/json\r\n{WRITE_TOKEN_HEADER}: {server.write_token}\r\n"
    )
    answer = _raw_post(server.port, f"{head}Content-Length: 30000000\r\n\r\n".encode(), b" " * 1024)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    # Chunked, no length announced: refused once the body passes the cap.
    chunk = b" " * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY // len(chunk) + 1))
    answer = _raw_post(server.port, f"{head}Transfer-Encoding: chunked\r\n\r\n".encode(), chunks + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert _csv(results) == before


@slow
def test_deeply_nested_json_is_a_bad_request(server: Server) -> None:
    sent = {"Content-Type": "application/json", WRITE_TOKEN_HEADER: server.write_token}
    for body in (b"[" * 100_000, b'{"a":' * 50_000):
        status, answer, _ = server.request("POST", "/api/verdict/demo_000", body, sent)
        assert status == 400 and b"nested too deep" in answer, (status, answer[:200])


@pytest.mark.timeout(60)  # a server that does start blocks: fail instead
def test_binding_beyond_loopback_needs_a_token(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main(["review", str(tmp_path), "--host", "0.0.0.0", "--port", str(_free_port())]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and TOKEN_ENV in err and "0.0.0.0" in err, err


@slow
def test_access_token_needed_on_every_request(results: Path) -> None:
    srv = Server(results, env={TOKEN_ENV: "s3cret-token"})
    try:
        for path in ("/", "/?token=wrong", "/thumb/demo_000", "/api/verdicts/demo_000", "/slide/demo_000"):
            assert srv.get(path)[0] == 401, path
        status, _, head = srv.request("GET", "/?token=s3cret-token")
        assert status == 303 and head["location"] == "/"
        cookie = head["set-cookie"].split(";")[0]
        assert "HttpOnly" in head["set-cookie"] and "samesite=strict" in head["set-cookie"].lower()
        for path in ("/", "/thumb/demo_000", "/api/verdicts/demo_000"):
            assert srv.get(path, headers={"Cookie": cookie})[0] == 200, path
        assert srv.get("/", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        page = srv.get("/slide/demo_000", headers={"Cookie": cookie})[1].decode()
        write = re.search(r'name="mambamil-write-token" content="([^"]+)"', page).group(1)
        sent = {"Content-Type": "application/json", WRITE_TOKEN_HEADER: write}
        body = json.dumps({**VERDICT, "reviewer": "tokened"}).encode()
        assert srv.request("POST", "/api/verdict/demo_000", body, sent)[0] == 401
        assert srv.request("POST", "/api/verdict/demo_000", body, {**sent, "Cookie": cookie})[0] == 200
    finally:
        srv.kill()


@slow
def test_two_servers_lose_no_verdict_and_show_each_others(server: Server, results: Path) -> None:
    other = Server(results)
    try:

        def post(srv: Server, i: int) -> int:
            verdict = {"reviewer": f"r{srv.port}-{i:03d}", "verdict": "agree", "note": ""}
            return srv.post("/api/verdict/cmu1", verdict)[0]

        with ThreadPoolExecutor(8) as pool:
            jobs = [pool.submit(post, srv, i) for i in range(200) for srv in (server, other)]
            assert [j.result() for j in jobs] == [200] * 400
        table = pd.read_csv(paths.verdicts_file(results), keep_default_na=False)
        for srv in (server, other):
            written = {f"r{srv.port}-{i:03d}" for i in range(200)}
            assert written <= set(table["reviewer"]), len(written - set(table["reviewer"]))
            # Each server shows the verdicts saved through the other.
            shown = {r["reviewer"] for r in json.loads(srv.get("/api/verdicts/cmu1")[1])}
            assert {f"r{p}-{i:03d}" for p in (server.port, other.port) for i in range(200)} <= shown
    finally:
        other.kill()


def test_default_colour_map_is_perceptually_uniform_and_markers_use_other_hues() -> None:
    # matplotlib's perceptually uniform sequential maps (https://matplotlib.org/stable/users/explain/colors/colormaps.html)
    assert CMAPS[0] in ("viridis", "plasma", "inferno", "magma", "cividis")
    lut = colour_lut(CMAPS[0]) / 255.0
    hsv = np.array([colorsys.rgb_to_hsv(*c) for c in lut])
    hues = hsv[hsv[:, 1] > 0.25, 0] * 360
    for marker in marker_colours(CMAPS[0]):
        h, s, _ = colorsys.rgb_to_hsv(*(int(marker[i : i + 2], 16) / 255 for i in (1, 3, 5)))
        if s > 0.25:
            gap = np.abs(hues - h * 360)
            assert np.minimum(gap, 360 - gap).min() > 30, (marker, CMAPS[0])
    assert len(set(marker_colours(CMAPS[0]))) == 2


def test_missing_results_folder_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["review", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and "results folder not found" in err, err
