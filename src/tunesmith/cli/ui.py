"""`tunesmith ui`: the web workshop (ui/) on this machine, over one workspace folder."""

from __future__ import annotations

from pathlib import Path

from tunesmith.utils.errors import TunesmithError

LOCAL = ("127.0.0.1", "localhost", "::1")


def parse_auth(auth: str | None, host: str) -> tuple[str, str] | None:
    """user:pass as a pair; required when the page is reachable beyond this machine."""
    if auth is None:
        if host not in LOCAL:
            raise TunesmithError(
                f"--host {host} makes the workshop reachable from other machines; give "
                "--auth user:pass as well (it can start processes and read the workspace)"
            )
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise TunesmithError("--auth must look like user:pass (both parts non-empty)")
    return user, password


def serve_ui(
    workspace: Path,
    host: str,
    port: int,
    lang: str,
    auth: str | None,
    runs_dir: str = "runs",
    max_upload_mb: int = 200,
) -> None:
    import uvicorn

    from tunesmith.ui import strings
    from tunesmith.ui.app import create_app
    from tunesmith.utils.console import console
    from tunesmith.workshop.workspace import Workspace

    strings.table(lang)  # an unknown language fails before anything starts
    pair = parse_auth(auth, host)
    app = create_app(Workspace(workspace, runs_dir), lang, pair, max_upload_mb)
    console.print(f"tunesmith ui: http://{host}:{port}/ (workspace {Path(workspace).resolve()})")
    uvicorn.run(app, host=host, port=port, log_level="warning")
