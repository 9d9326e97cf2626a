"""The results layout has one home (mambamil/paths.py): the rules and the CLI verbs take every output path from it."""

from __future__ import annotations

import re
from pathlib import Path

from mambamil import paths
from mambamil.cli import main

RULES = Path(__file__).resolve().parents[1] / "workflow" / "rules"


def test_rules_type_no_output_path_of_their_own() -> None:
    """A path under the results folder written out in a rule (``RESULTS / "tiles" / ...``, ``"{slide_id}.h5"``)
    would be a second copy of a fact of mambamil/paths.py."""
    checked = 0
    for smk in sorted(RULES.glob("*.smk")):
        text = smk.read_text(encoding="utf-8")
        if smk.name == "demo.smk":  # the demo cohort's own files (mambamil/demo.py), not the results layout
            continue
        checked += 1
        assert not re.search(r"RESULTS\s*/", text), f"{smk.name} builds a path under RESULTS by hand"
        assert not re.search(r"\.(h5|npy|csv|png|json|geojson|pt)\"", text), f"{smk.name} names an output file"
    assert checked >= 6


def test_results_layout_round_trip() -> None:
    results = Path("res")
    features = paths.features_dir(results, "enc")
    assert paths.feature_file(features, "s1") == Path("res/features/enc/s1.h5")
    assert paths.order_file(paths.order_dir(features, "hilbert"), "s1") == Path("res/features/enc/order/hilbert/s1.npy")
    fold = paths.fold_outputs(paths.fold_dir(results, "subtype", "mambamil", 2))
    assert fold["checkpoint"] == Path("res/models/subtype/mambamil/fold_2/checkpoint.pt")
    heat = paths.heatmap_outputs(paths.heatmap_dir(results, "s1"), "s1")
    assert heat["attention"] == Path("res/heatmaps/s1/s1.attention.png")
    # an external cohort is a results root of its own; its predictions sit beside the evaluation layout
    ext = paths.external_dir(results, "site_b")
    assert paths.feature_file(paths.features_dir(ext, "enc"), "s1") == Path("res/external/site_b/features/enc/s1.h5")
    assert paths.qc_tables(paths.qc_dir(ext))["slides"] == Path("res/external/site_b/qc/slides.csv")
    predicted = paths.external_outputs(paths.external_evaluation_dir(results, "site_b", "subtype", "abmil"))
    assert predicted["metrics"] == Path("res/external/site_b/subtype/abmil/metrics.json")
    final = paths.external_evaluation_dir(results, "site_b", "subtype", "abmil", final=True)
    assert final == Path("res/external/site_b/subtype/abmil/final")
    assert paths.final_model_dir(results, "subtype", "abmil") == Path("res/models/subtype/abmil/final")
    # every file name of one folder is distinct
    for files in (fold, heat, paths.tile_outputs(results, "s1"), paths.evaluation_outputs(results), predicted):
        assert len(set(files.values())) == len(files)


def test_tile_verb_writes_the_layout(demo_cohort: Path, tmp_path: Path) -> None:
    slide = sorted((demo_cohort / "slides").glob("*.tif*"))[0]
    assert main(["--quiet", "tile", str(slide), "--out", str(tmp_path), "--slide-id", "s1", "--seg-mpp", "16"]) == 0
    expected = set(paths.tile_outputs(tmp_path, "s1").values())
    assert {p for p in tmp_path.iterdir() if not p.name.startswith(".")} == expected


def test_finished_results_are_found_through_the_layout(tmp_path: Path) -> None:
    """The report and the review server find evaluations, external cohorts and tiled slides through paths.py."""
    for task, model in (("subtype", "abmil"), ("subtype", "mambamil"), ("survival", "mambamil")):
        paths.evaluation_outputs(paths.evaluation_dir(tmp_path, task, model))["metrics"].parent.mkdir(parents=True)
        paths.evaluation_outputs(paths.evaluation_dir(tmp_path, task, model))["metrics"].write_text("{}")
    paths.evaluation_outputs(paths.evaluation_dir(tmp_path, "survival", "mambamil"))["predictions"].write_text("")
    ext = paths.external_evaluation_dir(tmp_path, "site_b", "subtype", "abmil")
    ext.mkdir(parents=True)
    paths.evaluation_outputs(ext)["metrics"].write_text("{}")
    (paths.external_dir(tmp_path) / "README.txt").write_text("not a cohort")
    paths.tiles_dir(tmp_path).mkdir()
    for sid in ("b", "a"):
        paths.tile_outputs(paths.tiles_dir(tmp_path), sid)["coords"].write_text("")
    runs = paths.evaluation_runs(tmp_path)
    assert {t: sorted(m) for t, m in runs.items()} == {"subtype": ["abmil", "mambamil"], "survival": ["mambamil"]}
    assert runs["subtype"]["abmil"] == paths.evaluation_dir(tmp_path, "subtype", "abmil")
    assert list(paths.evaluation_runs(tmp_path, output="predictions")) == ["survival"]
    assert paths.external_cohorts(tmp_path) == ["site_b"]
    assert paths.evaluation_runs(tmp_path, "site_b") == {"subtype": {"abmil": ext}}
    assert paths.tiled_slides(tmp_path) == ["a", "b"]
    assert paths.external_cohorts(tmp_path / "nowhere") == [] and paths.tiled_slides(tmp_path / "nowhere") == []
