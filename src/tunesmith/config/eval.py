"""The `eval` section: what `tunesmith eval` measures and on which data."""

from __future__ import annotations

from tunesmith.config.base import Section


class EvalConfig(Section):
    pass
