"""Configuration: load ``config.yaml``, validate it against the JSON schema, fill defaults."""

from __future__ import annotations

import copy
import functools
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import yaml

from mambamil.errors import ConfigError

SCHEMA_NAME = "config.schema.yaml"


def load_schema() -> dict[str, Any]:
    """The config JSON schema (shipped in the package; ``workflow/schemas/`` links to the same file); a copy of
    the one parsed once per process."""
    return copy.deepcopy(_schema_and_validator()[0])


@functools.cache
def _schema_and_validator() -> tuple[dict[str, Any], Any]:
    """The schema, parsed once per process (YAML parsing costs ~0.06 s, paid per slide before), and its
    default-filling validator."""
    text = resources.files("mambamil.schemas").joinpath(SCHEMA_NAME).read_text(encoding="utf-8")
    schema = yaml.safe_load(text)
    cls = _with_defaults(jsonschema.validators.validator_for(schema))
    return schema, cls(schema)


def _with_defaults(validator_class: type) -> type:
    """A validator that fills in schema defaults, as ``snakemake.utils.validate(set_default=True)`` does."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def key_path(error: jsonschema.ValidationError) -> str:
    """A dotted key path for a validation error, e.g. ``tiling.target_mpp``."""
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def validate_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate ``config`` in place (defaults filled) and return it; :class:`ConfigError` names the key path."""
    validator = _schema_and_validator()[1]
    # Two passes: the first fills nested defaults (objects defaulted to {} get their own defaults on the second).
    for _ in range(2):
        errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
        if len(errors) == 1:
            raise ConfigError(f"{source}: {key_path(errors[0])}: {errors[0].message}")
        if errors:  # every error at once, each with its key path
            listed = "; ".join(f"{key_path(e)}: {e.message}" for e in errors)
            raise ConfigError(f"{source}: {len(errors)} errors: {listed}")
    for task, section in (config.get("tasks") or {}).items():
        if section.get("training"):
            task_training(config, task)  # per-task overrides must make a valid training section
    return config


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config file, apply ``overrides`` (top-level keys), validate and fill defaults."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(config).__name__}")
    config.update(overrides or {})
    return validate_config(config, source=str(path))


def default_section(name: str) -> dict[str, Any]:
    """The schema defaults of one config section (e.g. ``tiling``)."""
    return validate_config({"slides": "", "labels": ""}, source="defaults")[name]


def config_section(name: str, config_path: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """One validated config section: schema defaults, then the config file's section, then non-None overrides
    (e.g. CLI options). Errors name the key path, as for the whole file."""
    section = load_config(config_path)[name] if config_path else {}
    merged = {**section, **{k: v for k, v in overrides.items() if v is not None}}
    return validate_config({"slides": "", "labels": "", name: merged}, source=f"{name} options")[name]


Settings = TypeVar("Settings")


def settings_from_config(
    cls: type[Settings], name: str, section: dict[str, Any] | None = None, **overrides: Any
) -> Settings:
    """A settings dataclass from a (validated) config section over the schema defaults, then non-None overrides."""
    values = {**default_section(name), **(section or {})}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})  # type: ignore[call-arg]


def task_training(config: dict[str, Any], task: str) -> dict[str, Any]:
    """The ``training`` section as ``task`` uses it: the section, then the task's own ``training`` overrides,
    validated together (errors name ``tasks.<task>.training``)."""
    overrides = config["tasks"][task].get("training") or {}
    merged = {**config["training"], **overrides}
    return validate_config({"slides": "", "labels": "", "training": merged}, source=f"tasks.{task}.training")[
        "training"
    ]


def task_model(config: dict[str, Any], task: str, model: str) -> dict[str, Any]:
    """A model's options as ``task`` uses them: the ``models`` entry, then the task's ``model_kwargs``."""
    return {**config["models"][model], **(config["tasks"][task].get("model_kwargs") or {})}
