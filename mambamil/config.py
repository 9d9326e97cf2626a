"""Configuration: load ``config.yaml``, validate it against the JSON schema, fill defaults."""

from __future__ import annotations

import argparse
import copy
import functools
import json
from collections.abc import Callable, Collection
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


def config_section(
    name: str, config_path: str | Path | None = None, settings: dict[str, Any] | None = None, **overrides: Any
) -> dict[str, Any]:
    """One validated config section: schema defaults, then the config file's section, then ``settings`` (the
    section as the workflow computed it), then non-None overrides (e.g. CLI options). Errors name the key path,
    as for the whole file."""
    section = load_config(config_path)[name] if config_path else {}
    merged = {**section, **(settings or {}), **{k: v for k, v in overrides.items() if v is not None}}
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


# -- CLI options from the schema ------------------------------------------------------------------------------
#: Keys of a settings section that only the workflow reads (which jobs it makes), never a verb: the verbs have
#: no option for them, the settings dataclasses no field, and the rules leave them out of ``--settings`` (so
#: changing them reruns no job for that reason).
WORKFLOW_ONLY: dict[str, dict[str, str]] = {
    "features": {"slides_per_job": "how many slides one workflow job embeds"},
    "order": {"methods": "which order files the workflow makes; the verb computes one --method"},
    "training": {"final_model": "whether the workflow also trains a final model (the verb is train-final)"},
    "heatmaps": {
        "task": "which task's checkpoints the workflow draws (the verb takes --checkpoint)",
        "model": "which model's checkpoints the workflow draws (the verb takes --checkpoint)",
    },
}


def section_properties(section: str) -> dict[str, dict[str, Any]]:
    """The schema properties of one config section (name → property schema)."""
    return _schema_and_validator()[0]["properties"][section]["properties"]


def schema_choices(*path: str) -> list[Any]:
    """The ``enum`` of the schema property at ``path`` (``"*"``: any key of a mapping), e.g.
    ``schema_choices("training", "level")``; the schema owns the choice lists the command line offers."""
    node = _schema_and_validator()[0]
    for key in path:
        node = node["additionalProperties"] if key == "*" else node["properties"][key]
    return list(node["enum"])


def verb_settings(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` of a section without its workflow-only keys: what a rule passes to its verb."""
    return {k: v for k, v in values.items() if k not in WORKFLOW_ONLY.get(section, {})}


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: JSON text of an object (a usage error, on one line, otherwise)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


_SCALARS: dict[str, Callable[[str], Any]] = {"integer": int, "number": float, "string": str}
_METAVARS = {"integer": "N", "number": "X", "string": "TEXT"}


def _kinds(prop: dict[str, Any]) -> list[str]:
    """The non-null JSON types a property allows (over its ``oneOf`` alternatives, if any)."""
    types = [
        t
        for alt in prop.get("oneOf", [prop])
        for t in (alt["type"] if isinstance(alt["type"], list) else [alt["type"]])
    ]
    return [t for t in types if t != "null"]


def _converter(prop: dict[str, Any]) -> Callable[[str], Any]:
    """Text → value for one (non-boolean) schema property; ``oneOf`` tries each alternative in turn.
    Ranges and patterns are left to the schema validation of the merged section (errors name the key path)."""
    alternatives = prop.get("oneOf", [prop])

    def convert(text: str) -> Any:
        for alt in alternatives:
            try:
                value = _SCALARS[_kinds(alt)[0]](text)
            except ValueError:
                continue
            if "enum" not in alt or value in alt["enum"]:
                return value
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {_expected(alternatives)}")

    return convert


def _expected(alternatives: list[dict[str, Any]]) -> str:
    return " or ".join("|".join(map(str, a["enum"])) if "enum" in a else str(a["type"]) for a in alternatives)


def _option_kwargs(prop: dict[str, Any]) -> dict[str, Any]:
    """argparse keyword arguments for one schema property (type, nargs, choices, action)."""
    kind = prop.get("type")
    if kind == "boolean":
        return {"action": argparse.BooleanOptionalAction}
    if kind == "array":
        items = prop["items"]
        return {"nargs": "+", "type": _converter(items), **({"choices": items["enum"]} if "enum" in items else {})}
    if kind == "string" and "enum" in prop:
        return {"choices": prop["enum"]}
    if kind == "object":
        return {"type": json_object, "metavar": "JSON"}
    kinds = _kinds(prop)
    return {"type": _converter(prop), "metavar": _METAVARS[kinds[0]] if len(kinds) == 1 else "VALUE"}


def _help(prop: dict[str, Any]) -> str:
    """The schema description plus its default, escaped for argparse's %-formatting."""
    text = " ".join(prop["description"].split())
    if "default" in prop:
        default = prop["default"]
        text += f" (default: {default if isinstance(default, str) else json.dumps(default)})"
    return text.replace("%", "%%")


def add_section_options(parser: argparse.ArgumentParser, section: str, skip: Collection[str] = ()) -> None:
    """The settings options of a verb, all from the ``section`` of the schema: ``--config`` (the config file whose
    section applies), ``--settings`` (the section as JSON, as the workflow passes it) and one ``--kebab-name``
    option per property but ``skip`` and the workflow-only keys, typed, described and defaulted by the schema.
    Every option defaults to None, so :func:`section_from_args` tells what was given."""
    group = parser.add_argument_group(
        f"'{section}' settings",
        f"each from the config schema; schema defaults < --config FILE's '{section}' section < --settings < "
        "the options below",
    )
    group.add_argument("--config", type=Path, help=f"config.yaml whose '{section}' section gives the settings")
    group.add_argument(
        "--settings",
        type=json_object,
        metavar="JSON",
        help=f"the '{section}' section as a JSON object (the workflow passes the validated section)",
    )
    skipped = set(skip) | set(WORKFLOW_ONLY.get(section, {}))
    names = [name for name in section_properties(section) if name not in skipped]
    for name in names:
        prop = section_properties(section)[name]
        flag = "--" + name.replace("_", "-")
        group.add_argument(flag, dest=name, default=None, help=_help(prop), **_option_kwargs(prop))
    parser.set_defaults(section_options=tuple(names))


def section_from_args(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The validated ``section`` a verb runs with: schema defaults, ``--config``'s section, ``--settings``, then
    the section's options given on the command line."""
    given = {name: getattr(args, name) for name in args.section_options}
    return config_section(section, args.config, args.settings, **given)
