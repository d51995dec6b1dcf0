"""The `export` and `serve` sections."""

from __future__ import annotations

from tunesmith.config.base import Section


class ExportConfig(Section):
    pass


class ServeConfig(Section):
    pass
