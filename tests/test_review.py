"""`mambamil review`: the review server over a small results folder, over real HTTP and in headless Chromium.

The results folder is built from real stage outputs the tests make quickly: the tile stage on two demo slides,
the real Aperio slide and an empty file (a QC stub), the qc stage's tables; heatmap scores, predictions and the
evaluation table are written in those stages' formats (no training: the server only reads them).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import openslide
import pandas as pd
import pytest
from openslide.deepzoom import DeepZoomGenerator

from mambamil import paths
from mambamil.cli import main
from mambamil.demo import slide_path
from mambamil.fileio import write_json
from mambamil.h5layout import read_coords
from mambamil.heatmaps import colour_lut, rank_percentiles

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
    return res


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m mambamil review` in a subprocess, as a user starts it."""

    def __init__(self, results: Path) -> None:
        self.results, self.port = results, _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "mambamil", "review", str(results), "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stdout.read()}")
            try:
                urllib.request.urlopen(self.base + "/", timeout=5)
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        raise AssertionError("server did not start")

    def get(self, path: str) -> tuple[int, bytes, str]:
        """A raw request (the path is sent as written, not normalised)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, body, resp.getheader("Content-Type", "")

    def post(self, path: str, obj: object) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("POST", path, body=json.dumps(obj), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, body

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
def test_thumbnail_and_bokeh_served_offline(server: Server, results: Path) -> None:
    status, body, ctype = server.get("/thumb/demo_000")
    assert status == 200 and ctype == "image/png"
    assert body == paths.tile_outputs(paths.tiles_dir(results), "demo_000")["preview"].read_bytes()
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
    assert table[["slide_id", "reviewer", "verdict", "note"]].values.tolist() == [
        ["demo_001", "ann", "artefact", "pen, fold"],
        ["demo_001", "bob", "agree", "ok"],
    ]
    assert not [p for p in paths.review_dir(results).iterdir() if p.name != "verdicts.csv"]  # no temporary left
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
    assert not problems, problems
    page.close()


def test_missing_results_folder_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["review", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and "results folder not found" in err, err
