"""User errors become one red line and exit code 2, never a traceback."""

from __future__ import annotations

import functools

import typer
from rich.markup import escape

from tunesmith.utils.console import console
from tunesmith.utils.errors import TunesmithError

# Errors of the file system about a path (permissions, a missing folder): the user's to fix.
_FILE_ERRORS = (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


def user_errors(command):
    """Print a TunesmithError, or a file-system error naming its path, as one red message and
    exit 2, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TunesmithError as exc:
            # Escaped: brackets in a message ([a.jsonl]) are text, not rich markup. Soft wrap:
            # a `file:line:` prefix must stay on one line when the output goes to a log.
            console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None
        except _FILE_ERRORS as exc:  # a file the user named cannot be read or written
            if exc.filename is None:
                raise
            message = f"{exc.filename}: {exc.strerror or exc}"
            console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper
