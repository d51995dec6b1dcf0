"""A workspace: one folder whose paths the workshop accepts, and its runs folder.

Every path a door (CLI, UI, MCP) hands in is resolved here: `..`, absolute paths outside the
workspace and symlinks that lead out are refused with a sentence, because the UI and the agent
interface act for someone who should reach nothing beyond this folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from tunesmith.utils.errors import TunesmithError


class PathRefused(TunesmithError):
    """A path that would leave the workspace."""


class RunNotFound(TunesmithError):
    """No run folder by that name in the workspace's runs folder."""


class Workspace:
    def __init__(self, root: str | Path, runs: str = "runs"):
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise TunesmithError(f"workspace '{root}' is not a folder")
        self.runs_dir = self.resolve(runs)  # output.dir of every run the workshop starts

    def resolve(self, path: str | Path, what: str = "path") -> Path:
        """`path` (relative to the root, or absolute) as an absolute path inside the workspace,
        symlinks followed; refused when it leaves the workspace."""
        text = str(path)
        if not text.strip():
            raise PathRefused(f"{what}: empty; give a path inside the workspace {self.root}")
        if ".." in Path(text).parts:
            raise PathRefused(
                f"{what} '{text}': '..' is not allowed; give a path inside the workspace "
                f"{self.root}"
            )
        given = Path(text).expanduser()
        lexical = given if given.is_absolute() else self.root / given
        if not self.contains(lexical):
            raise PathRefused(f"{what} '{text}' is outside the workspace {self.root}")
        real = Path(os.path.realpath(lexical))
        if not self.contains(real):
            raise PathRefused(
                f"{what} '{text}' is a symlink (or lies under one) that leads outside the "
                f"workspace {self.root}"
            )
        return real

    def contains(self, path: Path) -> bool:
        return path == self.root or self.root in path.parents

    def run_dir(self, run: str | Path) -> Path:
        """A run folder: a name in the runs folder, or a path inside the workspace."""
        text = str(run)
        by_name = "/" not in text and os.sep not in text
        path = self.resolve(self.runs_dir / text if by_name else text, "run")
        if not path.is_dir():
            raise RunNotFound(f"run '{text}' not found in {self.runs_dir}")
        return path

    def relative(self, path: Path) -> str:
        """How a path is shown to a door: relative to the workspace root."""
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)
