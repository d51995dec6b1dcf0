"""Settings of the classification stage (train.stage: cls)."""

from __future__ import annotations

from tunesmith.config.base import Section


class ClsConfig(Section):
    pass
