"""The console every command prints through (rich: colour on terminals, plain text in logs)."""

from rich.console import Console

console = Console(highlight=False, soft_wrap=True)  # paths and file:line stay on one line
