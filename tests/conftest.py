"""Shared fixtures: the real Aperio slide and a small synthetic demo cohort."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mambamil.demo import generate_cohort

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SLIDE = REPO.parent / "shared" / "data" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def real_slide() -> Path:
    """CMU-1-Small-Region.svs (OpenSlide test data); override with MAMBAMIL_TEST_SLIDE."""
    path = Path(os.environ.get("MAMBAMIL_TEST_SLIDE", DEFAULT_SLIDE))
    if not path.exists():
        pytest.fail(f"real test slide not found: {path} (set MAMBAMIL_TEST_SLIDE to its path)")
    return path


@pytest.fixture(scope="session")
def demo_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-slide demo cohort (2048×1536 px nominal) made by the project's generator; read-only for tests."""
    out = tmp_path_factory.mktemp("demo_cohort")
    generate_cohort(out, n_slides=4, seed=0, size=(2048, 1536), progress=False)
    return out


CHROMIUM = Path(os.environ.get("MAMBAMIL_CHROMIUM", "/usr/bin/chromium"))
# Debian's Chromium on a machine without outside network: no background connections, no first-run, no sandbox (root).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (no browser download: the system binary).

    Skipped when Chromium is missing, unless MAMBAMIL_REQUIRE_BROWSER=1 (set by .ci/run), where it fails.
    """
    if not CHROMIUM.exists():
        message = f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set MAMBAMIL_CHROMIUM)"
        if os.environ.get("MAMBAMIL_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
