"""`tunesmith improve train | validate | deploy | cycle | demo`: the release half of the loop."""

from __future__ import annotations

from tunesmith.cli.improve import improve_app  # noqa: F401
