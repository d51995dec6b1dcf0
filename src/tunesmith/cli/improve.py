"""`tunesmith improve ...`: the continuous-improvement loop.

This module only creates the Typer group; the commands are added by
`tunesmith.cli.improve_signals` (mine, data) and `tunesmith.cli.improve_release`
(train, validate, deploy, cycle, demo), imported at the end.
"""

from __future__ import annotations

import typer

improve_app = typer.Typer(
    help="Continuous improvement: mine served logs, build targeted data, retrain, "
    "validate, canary.",
    no_args_is_help=True,
)

# The command modules register themselves on improve_app (imported last on purpose).
from tunesmith.cli import improve_release, improve_signals  # noqa: E402, F401
