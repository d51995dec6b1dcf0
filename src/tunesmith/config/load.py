"""Load a RunConfig from YAML plus `dotted.key=value` overrides, with errors a person can act on."""

from __future__ import annotations

import difflib
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from tunesmith.config.schema import MethodConfig, RunConfig
from tunesmith.utils.errors import ConfigError

_METHOD_VARIANTS: dict[str, type[BaseModel]] = {
    cls.model_fields["type"].default: cls for cls in MethodConfig.__origin__.__args__
}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML (optional), apply overrides, validate. Raises ConfigError."""
    data: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    for item in overrides or []:
        key, value = parse_override(item)
        if _is_text_field(key) and not isinstance(value, str | list | dict | None):
            # YAML reads 2024-06-01 as a date, 001 as 1, yes as True; a text field wants the text.
            value = item.partition("=")[2].strip()
        set_dotted(data, key, value)
    return validate(data, source=str(path) if path else "overrides")


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{item}' must look like key=value (e.g. train.epochs=2)")
    # YAML parsing gives numbers, booleans and lists ([a, b]) their natural types.
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(f"override '{key}': '{prefix}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def validate(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(err, data) for err in exc.errors()]
        raise ConfigError(f"{source}: invalid configuration\n  " + "\n  ".join(lines)) from None


def save_config(config: RunConfig, path: Path) -> None:
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    path.write_text(text, encoding="utf-8")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        sections = ", ".join(RunConfig.model_fields)
        raise ConfigError(
            f"{path}: expected a mapping of sections ({sections}) at the top level, "
            f"got a {type(data).__name__}"
        )
    return data


def _describe(err: dict[str, Any], data: dict[str, Any]) -> str:
    loc = _clean_loc(err["loc"])
    path = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], data)
        prefix = ".".join(str(p) for p in loc[:-1])
        hint = _closest(str(loc[-1]), allowed, prefix)
        return f"unknown key '{path}'{hint}; allowed here: {', '.join(allowed)}"
    if err["type"] == "union_tag_invalid":
        tag = err["ctx"]["tag"]
        return f"{path}.type: got '{tag}'{_closest(tag, list(_METHOD_VARIANTS))}; allowed: " + (
            ", ".join(_METHOD_VARIANTS)
        )
    message = f"{path}: got {err['input']!r}: {err['msg']}"
    expected = err.get("ctx", {}).get("expected")
    if err["type"] == "literal_error" and isinstance(err["input"], str) and expected:
        choices = [c.strip(" '") for c in expected.replace(" or ", ", ").split(",")]
        message += _closest(err["input"], choices)
    return message


def _is_text_field(key: str) -> bool:
    """Whether the field at `key` takes text and no number or boolean (name, path, revision).

    Raises ConfigError when `key` goes below a field that holds a value, not a section.
    Unknown keys answer False: validation reports them with suggestions.
    """
    models: list[type[BaseModel]] = [RunConfig]  # the method section: one of its variants
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        if not fields:
            return False
        annotation = fields[0].annotation
        if depth == len(parts) - 1:
            return _takes_text_only(annotation)
        options = _flatten(annotation)
        if all(isinstance(o, type) and issubclass(o, BaseModel) for o in options):
            models = options
        elif get_origin(annotation) is dict:
            return depth == len(parts) - 2 and _takes_text_only(get_args(annotation)[1])
        else:
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(f"override '{key}': '{prefix}' is a value, not a section")
    return False


def _takes_text_only(annotation: Any) -> bool:
    """str, str | None, list[str], str | list[str]: text, and no number or boolean."""
    found = set(_flatten(annotation, into_lists=True))
    return str in found and not found & {int, float, bool}


def _flatten(annotation: Any, into_lists: bool = False) -> list[Any]:
    """The members of a union (and, with into_lists, the item types of lists)."""
    origins = (Union, types.UnionType, list) if into_lists else (Union, types.UnionType)
    if get_origin(annotation) in origins:
        return [t for arg in get_args(annotation) for t in _flatten(arg, into_lists)]
    return [annotation]


def _clean_loc(loc: tuple) -> tuple:
    # Pydantic puts the union tag into the location of discriminated unions: method.lora.r
    if len(loc) >= 2 and loc[0] == "method" and loc[1] in _METHOD_VARIANTS:
        return (loc[0], *loc[2:])
    return loc


def _allowed_keys(parent: tuple, data: dict[str, Any]) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in parent:
        if model is RunConfig and part == "method":
            method = data.get("method")
            kind = method.get("type", "lora") if isinstance(method, dict) else "lora"
            model = _METHOD_VARIANTS.get(kind, _METHOD_VARIANTS["lora"])
            continue
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _closest(word: str, choices: list[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not match:
        return ""
    return f" (did you mean '{prefix + '.' if prefix else ''}{match[0]}'?)"
