"""Settings of the preference stages (dpo, orpo, simpo, kto, rm) and of distillation."""

from __future__ import annotations

from tunesmith.config.base import Section


class PreferenceConfig(Section):
    pass


class DistillConfig(Section):
    pass
