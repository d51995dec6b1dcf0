"""The base of every config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # Unknown keys are errors (a typo must not be silently ignored).
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def listed_twice(values: list[str]) -> list[str]:
    """The values that occur more than once, sorted (for "listed twice" errors)."""
    return sorted({value for value in values if values.count(value) > 1})
