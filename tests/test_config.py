"""Config schema: defaults, key-path errors, the copy under workflow/schemas, and the input sheets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mambamil.cli import main
from mambamil.config import load_config, load_schema, validate_config
from mambamil.errors import ConfigError, InputFileError
from mambamil.sheets import read_label_sheet, read_slide_sheet


def test_root_config_is_valid_and_defaults_fill(repo_root: Path) -> None:
    config = load_config(repo_root / "config.yaml")
    assert config["tiling"]["target_mpp"] == 0.5
    minimal = validate_config({"slides": "s.csv", "labels": "l.csv"})
    assert minimal["results"] == "results"
    assert minimal["tiling"]["patch_size"] == 256


def test_workflow_schema_is_the_package_schema(repo_root: Path) -> None:
    wf = yaml.safe_load((repo_root / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert wf == load_schema()


@pytest.mark.parametrize(
    ("patch", "path"),
    [
        ({"tiling": {"target_mpp": -1}}, "tiling.target_mpp"),
        ({"tiling": {"overlap": 1.0}}, "tiling.overlap"),
        ({"tiling": {"saturation_threshold": "auto"}}, "tiling.saturation_threshold"),
        ({"tiling": {"patch_sise": 256}}, "tiling"),
        ({"demo_cohort": {"n_slides": "many"}}, "demo_cohort.n_slides"),
        ({"resources": {"tile": {"mem_mb": "lots"}}}, "resources.tile.mem_mb"),
    ],
)
def test_invalid_values_name_the_key_path(patch: dict, path: str) -> None:
    with pytest.raises(ConfigError) as exc:
        validate_config({"slides": "s.csv", "labels": "l.csv", **patch}, source="my.yaml")
    assert str(exc.value).startswith(f"my.yaml: {path}:")


def test_missing_required_and_bad_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("labels: x.csv\n")
    with pytest.raises(ConfigError, match="'slides' is a required property"):
        load_config(p)
    p.write_text("slides: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_validate_config_cli(repo_root: Path, tmp_path: Path, capsys) -> None:
    assert main(["validate-config", str(repo_root / "config.yaml")]) == 0
    assert "target_mpp: 0.5" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("slides: a\nlabels: b\ntiling: {patch_size: 3}\n")
    assert main(["validate-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "tiling.patch_size" in err and len(err.strip().splitlines()) == 1


def test_slide_sheet(tmp_path: Path) -> None:
    p = tmp_path / "slides.csv"
    p.write_text("slide_id,path,mpp\na,sub/a.svs,\nb,/abs/b.svs,0.25\n")
    df = read_slide_sheet(p)
    assert df.loc["a", "path"] == str(tmp_path / "sub" / "a.svs")
    assert df.loc["b", "mpp"] == 0.25 and df.loc["a", "case_id"] == "a"
    p.write_text("slide_id,path\na,x.svs\na,y.svs\n")
    with pytest.raises(InputFileError, match=r"duplicate slide_id\(s\) \['a'\]"):
        read_slide_sheet(p)
    p.write_text("slide,file\na,x.svs\n")
    with pytest.raises(InputFileError, match="lacks column"):
        read_slide_sheet(p)


def test_label_sheet_censorship(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text("case_id,slide_id,time,censorship\nc1,s1,10,1\nc2,s2,5,0\n")
    df = read_label_sheet(p)
    assert df["event"].tolist() == [0, 1]
    p.write_text("case_id,slide_id,time,event\nc1,s1,10,2\n")
    with pytest.raises(InputFileError, match="s1"):
        read_label_sheet(p)
