"""The workshop's action layer: what the CLI, the UI and the agent interface (MCP) all call.

`workspace.py` keeps every path inside one folder, `runs.py` reads the runs table from the run
folders (the single source of truth), `actions.py` holds the actions as functions that return
JSON-able dicts and raise TunesmithError with a sentence.
"""
