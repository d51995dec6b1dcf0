"""The base of every config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # Unknown keys are errors (a typo must not be silently ignored).
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def listed_once(values: list[str], what: str) -> list[str]:
    """`values` unchanged, or a ValueError naming those listed more than once (a validator's)."""
    twice = sorted({value for value in values if values.count(value) > 1})
    if twice:
        raise ValueError(f"{what} listed more than once: {', '.join(twice)}")
    return values
