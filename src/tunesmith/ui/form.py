"""The Train tab's form, generated from the config schema (config/schema.py, config/methods.py).

Every plain field of the model, data, train and output sections, of each method and of each
stage's own settings (train.cls, train.preference, ... : config/schema.py STAGE_SETTINGS) becomes
one form field; other nested sections (monitor, early stopping, ...) and mappings stay in the
YAML, which the page shows beside the form and lets a person edit. `form_yaml` writes only the
values that differ from the schema's defaults, so the YAML reads like one a person would write
and loads (config/load.py) into the same RunConfig as the form's values.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tunesmith.config.methods import MethodConfig
from tunesmith.config.schema import (
    STAGE_SETTINGS,
    DataConfig,
    ModelConfig,
    OutputConfig,
    TrainConfig,
)

SECTIONS: dict[str, type[BaseModel]] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "output": OutputConfig,
}
METHODS: dict[str, type[BaseModel]] = {
    cls.model_fields["type"].default: cls for cls in typing.get_args(MethodConfig.__origin__)
}
ALWAYS = ("model.name_or_path", "data.train")  # written even at their defaults: a run needs them
# the workshop places every run in the workspace's runs folder (actions.train sets output.dir)
LEFT_OUT = ("output.dir", "output.overwrite")


@dataclass(frozen=True)
class FormField:
    key: str  # dotted config key (method fields: method.<name>)
    kind: str  # choice | bool | int | float | text | list | text_or_list
    default: Any
    choices: tuple = ()
    optional: bool = False  # None is allowed (an empty box)
    help: str = ""
    method: str | None = None  # the method type this field belongs to
    stages: tuple[str, ...] = ()  # a stage section's field: the stages that read it
    required: bool = False  # no default (distill.teacher): written whenever its stage is chosen


def section_fields(
    section: str, model: type[BaseModel], method: str | None = None, stages: tuple = ()
):
    """The plain fields of a config section, in schema order."""
    out = []
    for name, info in model.model_fields.items():
        if name == "type" and method:
            continue
        kind, choices, optional = _kind(info.annotation)
        if kind is None or f"{section}.{name}" in LEFT_OUT:
            continue
        default = info.get_default(call_default_factory=True)
        required = default is PydanticUndefined
        if required and not stages:
            continue
        out.append(
            FormField(
                f"{section}.{name}",
                kind,
                None if required else default,
                choices,
                optional,
                info.description or "",
                method,
                stages,
                required,
            )
        )
    return out


def stage_sections() -> dict[str, tuple[str, ...]]:
    """train.<section> -> the stages that read it, in STAGE_SETTINGS order."""
    sections: dict[str, tuple[str, ...]] = {}
    for stage, section in STAGE_SETTINGS.items():
        sections[section] = (*sections.get(section, ()), stage)
    return sections


def form_fields() -> list[FormField]:
    fields = [f for section, model in SECTIONS.items() for f in section_fields(section, model)]
    for section, stages in stage_sections().items():
        model = _section_model(TrainConfig.model_fields[section].annotation)
        fields += section_fields(f"train.{section}", model, stages=stages)
    for method, model in METHODS.items():
        fields += section_fields("method", model, method)
    return fields


def _section_model(annotation) -> type[BaseModel]:
    """The section class of `X` or `X | None`."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    raise TypeError(f"not a config section: {annotation}")


def _kind(annotation) -> tuple[str | None, tuple, bool]:
    args = typing.get_args(annotation)
    optional = _is_union(annotation) and type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        annotation = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return "choice", tuple(args), optional
    if annotation in (bool, int, float, str):
        return {bool: "bool", int: "int", float: "float", str: "text"}[annotation], (), optional
    if typing.get_origin(annotation) is list and args == (str,):
        return "list", (), optional
    if _is_union(annotation) and set(args) == {str, list[str]}:
        return "text_or_list", (), optional
    return None, (), optional  # mappings, nested sections, mixed unions: YAML only


def _is_union(annotation) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def shown_value(field: FormField, value: Any = None) -> Any:
    """A config value as its form component holds it (lists as comma-separated text)."""
    value = field.default if value is None else value
    if field.kind in ("list", "text_or_list") and isinstance(value, list):
        return ", ".join(map(str, value))
    if field.kind == "text" and value is None:
        return ""
    return value


def parsed_value(field: FormField, value: Any) -> Any:
    """What a form component holds, as the config value."""
    if value is None or (isinstance(value, str) and not value.strip() and field.optional):
        return None
    if field.optional and field.kind in ("int", "float") and value == 0:
        return None  # an emptied number box reads 0, and every optional number here is >= 1
    if field.kind == "list":
        return [part.strip() for part in str(value).split(",") if part.strip()]
    if field.kind == "text_or_list":
        parts = [part.strip() for part in str(value).split(",") if part.strip()]
        return parts if len(parts) != 1 else parts[0]
    if field.kind == "int":
        return int(value)
    if field.kind == "float":
        return float(value)
    return value


def form_config(fields: list[FormField], values: list[Any], method: str) -> dict:
    """The config the form describes: values that differ from the defaults, as nested data; a
    method's fields only for the chosen method, a stage section's only for the chosen stage."""
    data: dict = {"method": {"type": method}}
    chosen = dict(zip([f.key for f in fields], values, strict=True))
    stage = chosen.get("train.stage") or TrainConfig.model_fields["stage"].default
    for field, value in zip(fields, values, strict=True):
        if field.method not in (None, method) or (field.stages and stage not in field.stages):
            continue
        parsed = parsed_value(field, value)
        if parsed == field.default and field.key not in ALWAYS and not field.required:
            continue
        *path, name = field.key.split(".")
        target = data
        for part in path:
            target = target.setdefault(part, {})
        target[name] = parsed
    order = ("model", "method", "data", "train", "output")
    return {k: data[k] for k in order if k in data}


def form_yaml(fields: list[FormField], values: list[Any], method: str) -> str:
    return yaml.safe_dump(form_config(fields, values, method), sort_keys=False, allow_unicode=True)
