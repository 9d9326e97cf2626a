"""One home for every setting: the schema gives names, types, defaults and help text; the settings dataclasses
and the CLI options follow it (these tests fail on any drift), and every verb layers its settings the same way:
schema defaults < --config FILE < --settings JSON < options."""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mambamil.cli import build_parser, main
from mambamil.config import WORKFLOW_ONLY, section_properties
from mambamil.evaluation.frame import EvaluationSettings
from mambamil.features.extract import FeatureSettings
from mambamil.heatmaps import HeatmapSettings
from mambamil.tiling import TilingSettings
from mambamil.train.engine import TrainSettings

DATACLASSES = [
    (TilingSettings, "tiling"),
    (FeatureSettings, "features"),
    (HeatmapSettings, "heatmaps"),
    (TrainSettings, "training"),
    (EvaluationSettings, "evaluation"),
]
VERBS = {"tile": "tiling", "features": "features", "order": "order", "heatmap": "heatmaps"}


def verb_keys(section: str) -> set[str]:
    return set(section_properties(section)) - set(WORKFLOW_ONLY.get(section, {}))


def verb_parser(verb: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[verb]


def settings_actions(
    verb: str, section: str, parser: argparse.ArgumentParser | None = None
) -> dict[str, argparse.Action]:
    """The generated options of a verb (its settings group, less --config and --settings), by key."""
    group = next(g for g in (parser or verb_parser(verb))._action_groups if g.title == f"'{section}' settings")
    return {a.dest: a for a in group._group_actions if a.dest not in ("config", "settings")}


def test_workflow_only_keys_are_schema_keys_with_a_reason() -> None:
    for section, keys in WORKFLOW_ONLY.items():
        for key, reason in keys.items():
            assert key in section_properties(section), f"{section}.{key}"
            assert reason.strip()


@pytest.mark.parametrize(("cls", "section"), DATACLASSES, ids=[s for _, s in DATACLASSES])
def test_dataclass_fields_are_the_schema_keys_without_defaults(cls: type, section: str) -> None:
    assert {f.name for f in fields(cls)} == verb_keys(section)
    with_default = [f.name for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING]
    assert not with_default, f"{cls.__name__}: defaults belong in the schema, not {with_default}"
    defaults = cls.from_config()
    for name, prop in section_properties(section).items():
        if "default" in prop and name in verb_keys(section):
            assert getattr(defaults, name) == prop["default"], name


@pytest.mark.parametrize(("verb", "section"), VERBS.items())
def test_verb_options_are_the_schema_keys(verb: str, section: str) -> None:
    parser = verb_parser(verb)
    generated = settings_actions(verb, section, parser)
    assert set(generated) == verb_keys(section)
    others = [a for a in parser._actions if a.dest in verb_keys(section) and a not in generated.values()]
    assert not others, f"hand-written options duplicate schema keys: {[a.option_strings for a in others]}"
    for name, action in generated.items():
        prop = section_properties(section)[name]
        assert f"--{name.replace('_', '-')}" in action.option_strings
        assert action.default is None, f"{name}: the default comes from the schema, not argparse"
        assert " ".join(prop["description"].split()) in action.help.replace("%%", "%"), name
        default = prop.get("default")
        if default is None:
            continue
        shown = default if isinstance(default, str) else json.dumps(default)
        assert f"(default: {shown})" in action.help, name
        # The option's type reads its own schema default back.
        if isinstance(action, argparse.BooleanOptionalAction):
            continue
        texts = [str(v) for v in default] if isinstance(default, list) else [shown]
        values = [action.type(t) if action.type else t for t in texts]
        assert (values if isinstance(default, list) else values[0]) == default, name
        if action.choices is not None:
            assert set(texts) <= set(action.choices), name


def test_option_types_follow_the_schema() -> None:
    tile = settings_actions("tile", "tiling")
    assert tile["saturation_threshold"].type("otsu") == "otsu"
    assert tile["saturation_threshold"].type("20") == 20
    with pytest.raises(argparse.ArgumentTypeError):
        tile["saturation_threshold"].type("auto")
    assert tile["patch_size"].type("128") == 128 and tile["overlap"].type("0.25") == 0.25
    feats = settings_actions("features", "features")
    assert feats["encoder_kwargs"].type('{"a": 1}') == {"a": 1}
    assert feats["precision"].choices == ["auto", "fp32", "bf16", "fp16"]
    assert isinstance(feats["fp16_storage"], argparse.BooleanOptionalAction)


def test_parse_errors_are_one_line(capsys) -> None:
    for argv in (["tile", "x", "--out", "o", "--saturation-threshold", "auto"], ["features", "--encoder-kwargs", "{"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"mambamil {argv[0]}: error: argument --"), err


@pytest.fixture()
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "slides: s.csv\nlabels: l.csv\n"
        "tiling: {patch_size: 128, overlap: 0.25, seg_mpp: 4.0}\n"
        "features: {batch_size: 8, fp16_storage: true, encoder_kwargs: {b: 2}}\n"
        "heatmaps: {mpp: 4.0, cmap: gray, top_k: 3}\n"
        "order: {seed: 5}\n",
        encoding="utf-8",
    )
    return path


def _slide_stage(stage, slide_id, outputs, inputs, on_bad_slide, work, slide_file=None):  # type: ignore[no-untyped-def]
    return work()


def test_tile_precedence(config_file: Path, tmp_path: Path, monkeypatch) -> None:
    seen = {}

    def tile_slide(slide, out, settings, slide_id, mpp):  # type: ignore[no-untyped-def]
        seen["settings"] = settings
        return SimpleNamespace(slide_id=slide_id, n_patches=0, tissue_area_mm2=0.0)

    monkeypatch.setattr("mambamil.qc.run_slide_stage", _slide_stage)
    monkeypatch.setattr("mambamil.tiling.tile_slide", tile_slide)
    settings = json.dumps({"patch_size": 192, "overlap": 0.5})
    argv = ["tile", "s.svs", "--out", str(tmp_path), "--config", str(config_file), "--settings", settings]
    assert main([*argv, "--patch-size", "224", "--saturation-threshold", "30"]) == 0
    s = seen["settings"]
    assert (s.patch_size, s.overlap, s.seg_mpp, s.target_mpp) == (224, 0.5, 4.0, 0.5)  # flag, settings, file, schema
    assert s.saturation_threshold == 30
    assert main(["tile", "s.svs", "--out", str(tmp_path), "--target-mpp", "1.0"]) == 0
    assert seen["settings"].target_mpp == 1.0 and seen["settings"].patch_size == 256


def test_features_precedence(config_file: Path, monkeypatch) -> None:
    seen = {}

    def extract_slides(jobs, settings, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen["settings"] = settings
        return []

    monkeypatch.setattr("mambamil.cli.features.feature_jobs", lambda args: [])
    monkeypatch.setattr("mambamil.features.many_slides.extract_slides", extract_slides)
    settings = json.dumps({"batch_size": 16, "weights": "random", "num_workers": None})
    argv = ["features", "--config", str(config_file), "--settings", settings, "--no-fp16-storage"]
    assert main([*argv, "--encoder-kwargs", '{"a": 1}', "--num-workers", "3"]) == 0
    s = seen["settings"]
    assert (s.batch_size, s.weights, s.fp16_storage, s.encoder_kwargs) == (16, "random", False, {"a": 1})
    assert (s.num_workers, s.encoder, s.torch_threads) == (3, "resnet50_trunc", None)


def test_heatmap_precedence(config_file: Path, tmp_path: Path, monkeypatch) -> None:
    seen = {}

    def heatmap_slide(slide, features, checkpoints, out, settings, slide_id, slide_mpp, original, order=None):  # type: ignore[no-untyped-def]
        seen.update(settings=settings, order=order)
        return {"slide_id": "s", "n_patches": 0, "scores": []}

    monkeypatch.setattr("mambamil.heatmaps.heatmap_slide", heatmap_slide)
    base = ["heatmap", "s.svs", "--features", "f.h5", "--checkpoint", "c.pt", "--out", str(tmp_path)]
    assert main([*base, "--mpp", "8", "--alpha", "0.5", "--top-k", "12"]) == 0
    assert seen["settings"] == HeatmapSettings(mpp=8.0, cmap="jet", alpha=0.5, smooth_um=0.0, top_k=12)
    assert seen["order"] is None
    argv = [*base, "--config", str(config_file), "--settings", '{"cmap": "viridis", "top_k": 4}', "--top-k", "2"]
    assert main([*argv, "--order", "hilbert"]) == 0
    assert seen["settings"] == HeatmapSettings(mpp=4.0, cmap="viridis", alpha=0.5, smooth_um=0.0, top_k=2)
    assert seen["order"] == "hilbert"


def test_heatmap_validation_names_the_key(tmp_path: Path, capsys) -> None:
    argv = ["heatmap", "s.svs", "--features", "f.h5", "--checkpoint", "c.pt", "--out", str(tmp_path), "--mpp", "0"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "heatmaps.mpp" in err, err


def test_order_seed_precedence(config_file: Path, tmp_path: Path) -> None:
    """The real order stage on a real (tiny) bag: the random control's seed follows the precedence."""
    from mambamil.h5layout import CoordsAttrs, FeatureAttrs, write_features
    from mambamil.order import slide_order

    xs, ys = np.meshgrid(np.arange(6) * 256, np.arange(5) * 256)
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    bag = tmp_path / "s.h5"
    meta = CoordsAttrs(patch_size=256, target_mpp=0.5, patch_size_level0=256.0, step_level0=256.0)
    write_features(bag, np.ones((len(coords), 4), np.float32), coords, FeatureAttrs(feature_dim=4), meta)
    base = ["order", str(bag), "--out", str(tmp_path / "s.npy"), "--method", "random"]
    config = ["--config", str(config_file)]
    calls = ([], config, [*config, "--settings", '{"seed": 7}'], [*config, "--settings", '{"seed": 7}', "--seed", "9"])
    written = []
    for extra in calls:
        assert main([*base, *extra]) == 0
        written.append(np.load(tmp_path / "s.npy").tolist())
    expected = [slide_order(coords, meta, "random", seed, "s").tolist() for seed in (0, 5, 7, 9)]
    assert written == expected
    assert len({tuple(w) for w in written}) == 4  # the seeds give different sequences, so the test can fail


def test_spec_is_an_alias_of_settings() -> None:
    parser = build_parser()
    for flag in ("--settings", "--spec"):
        args = parser.parse_args(["evaluate", "p.csv", flag, '{"task_name": "t"}', "--out", "o"])
        assert args.spec == {"task_name": "t"}


def test_task_settings_are_validated(tmp_path: Path, capsys) -> None:
    settings = json.dumps({"task_name": "t", "task": {"type": "survival"}, "training": {"folds": 1}})
    assert main(["evaluate", "p.csv", "--settings", settings, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training.folds" in err, err
