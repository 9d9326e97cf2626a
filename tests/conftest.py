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
