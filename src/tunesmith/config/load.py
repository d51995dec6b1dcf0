"""Load a RunConfig from YAML plus `dotted.key=value` overrides, with errors a person can act on."""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError
from rich.console import Console

from tunesmith.config.methods import MethodConfig
from tunesmith.config.schema import RunConfig
from tunesmith.utils.errors import ConfigError

_METHOD_VARIANTS: dict[str, type[BaseModel]] = {
    cls.model_fields["type"].default: cls for cls in MethodConfig.__origin__.__args__
}

# Deprecated key -> the key that replaced it. The old key is still read from YAML and key=value
# overrides and moved onto the new one, with a note printed once per process; both given with
# different values is an error naming both.
DEPRECATED_KEYS: dict[str, str] = {"train.cls.max_length": "data.cutoff_len"}
_noted: set[str] = set()
_stderr = Console(stderr=True, highlight=False, soft_wrap=True)  # stdout may carry a report


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, saved: bool = False
) -> RunConfig:
    """Read YAML (optional), apply overrides, validate. Raises ConfigError. `saved`: the file
    is a run folder's own config.yaml, written by tunesmith (maybe an older one)."""
    data: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    if saved:
        data = _upgrade_saved(data)
    for item in overrides or []:
        key, value = parse_override(item)
        set_dotted(data, key, value)
    return validate(data, source=str(path) if path else "overrides")


def _upgrade_saved(data: dict[str, Any]) -> dict[str, Any]:
    """A config.yaml saved before data.cutoff_len was the one length key holds
    train.cls.max_length (at least its default) beside it: the length a cls run used, and
    nothing for any other stage."""
    train = data.get("train") or {}
    if "max_length" not in (train.get("cls") or {}):
        return data
    data = copy.deepcopy(data)
    length = data["train"]["cls"].pop("max_length")
    if train.get("stage") == "cls":
        data.setdefault("data", {})["cutoff_len"] = length
    return data


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{item}' must look like key=value (e.g. train.epochs=2)")
    raw = raw.strip()
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        return key.strip(), raw
    # Text, lists, mappings and null come from YAML ("my run" is unquoted); other scalars stay as
    # typed and pydantic converts them by the field's type ("1e-4" -> float, "true" -> bool), so a
    # text field keeps 2024-06-01 or 0012345 instead of YAML's date or integer.
    keep = value is None or isinstance(value, str | list | dict)
    return key.strip(), value if keep else raw


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
    data, moved = apply_deprecated_keys(data, source)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            line = describe_error(err, data)
            path = ".".join(str(p) for p in _clean_loc(err["loc"]))
            lines.append(f"{line} (given as {moved[path]})" if path in moved else line)
        raise ConfigError(f"{source}: invalid configuration\n  " + "\n  ".join(lines)) from None


def apply_deprecated_keys(
    data: dict[str, Any], source: str = "config"
) -> tuple[dict[str, Any], dict[str, str]]:
    """A copy of `data` with each deprecated key moved onto its new key, and {new: old} for the
    keys moved. Raises ConfigError, naming both keys, when both are set and disagree."""
    moved: dict[str, str] = {}
    for old, new in DEPRECATED_KEYS.items():
        old_parent = _section(data, old.split(".")[:-1])
        old_leaf = old.rsplit(".", 1)[-1]
        if old_parent is None or old_leaf not in old_parent:
            continue
        if not moved:
            data = copy.deepcopy(data)  # the caller's mapping stays as it was
            old_parent = _section(data, old.split(".")[:-1])
        value = old_parent.pop(old_leaf)
        new_parent = _section(data, new.split(".")[:-1], create=True)
        if new_parent is None:
            raise ConfigError(f"{source}: '{new}' cannot be set: a parent key holds a value")
        new_leaf = new.rsplit(".", 1)[-1]
        if new_leaf in new_parent and not _same(new_parent[new_leaf], value):
            raise ConfigError(
                f"{source}: {old}={value} and {new}={new_parent[new_leaf]} disagree; "
                f"{old} is a deprecated name of {new}: set {new} alone"
            )
        new_parent[new_leaf] = value
        moved[new] = old
        if old not in _noted:
            _noted.add(old)
            _stderr.print(f"[yellow]deprecated:[/yellow] {old} is now {new}; set {new}={value}")
    return data, moved


def save_config(config: RunConfig, path: Path) -> None:
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    path.write_text(text, encoding="utf-8")


def read_yaml_mapping(path: Path, what: str = "config file", expected: str = "a mapping") -> dict:
    """A YAML file holding a mapping; errors name the file (and line) and what was expected."""
    if not path.is_file():
        raise ConfigError(f"{what} '{path}' not found")
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
        raise ConfigError(f"{path}: expected {expected}, got a {type(data).__name__}")
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    sections = ", ".join(RunConfig.model_fields)
    return read_yaml_mapping(path, expected=f"a mapping of sections ({sections}) at the top level")


def describe_error(err: dict[str, Any], data: dict[str, Any]) -> str:
    """One line for one pydantic error of `data`: the dotted key, what was given, what is
    allowed (with a "did you mean" where a key or value is close). Any project file's loader
    (run config, assistant.yaml, improve.yaml) uses it."""
    loc = _clean_loc(err["loc"])
    path = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], data)
        prefix = ".".join(str(p) for p in loc[:-1])
        hint = closest(str(loc[-1]), allowed, prefix)
        return f"unknown key '{path}'{hint}; allowed here: {', '.join(allowed)}"
    if err["type"] == "union_tag_invalid":
        tag = err["ctx"]["tag"]
        return f"{path}.type: got '{tag}'{closest(tag, list(_METHOD_VARIANTS))}; allowed: " + (
            ", ".join(_METHOD_VARIANTS)
        )
    return f"{path}: got {err['input']!r}: {err['msg']}{literal_hint(err)}"


def literal_hint(err: dict) -> str:
    """ " (did you mean ...?)" for a pydantic literal error close to an allowed value; else ""."""
    expected = err.get("ctx", {}).get("expected")
    if err["type"] != "literal_error" or not isinstance(err["input"], str) or not expected:
        return ""
    choices = [c.strip(" '") for c in expected.replace(" or ", ", ").split(",")]
    return closest(err["input"], choices)


def _section(data: dict[str, Any], parts: list[str], create: bool = False) -> dict | None:
    """The mapping at `parts` (created on the way when `create`), or None where there is none."""
    node: Any = data
    for part in parts:
        if not isinstance(node, dict):
            return None
        node = node.setdefault(part, {}) if create else node.get(part)
    return node if isinstance(node, dict) else None


def _same(a: Any, b: Any) -> bool:
    # An override arrives as text ("128"), YAML gives numbers: 128, "128" and 128.0 agree.
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


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
        # an optional section (X | None) lists the keys of X
        options = get_args(model.model_fields[str(part)].annotation) or (
            model.model_fields[str(part)].annotation,
        )
        sections = [t for t in options if isinstance(t, type) and issubclass(t, BaseModel)]
        if not sections:
            return []
        model = sections[0]
    return list(model.model_fields)


def closest(word: str, choices: list[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not match:
        return ""
    return f" (did you mean '{prefix + '.' if prefix else ''}{match[0]}'?)"
