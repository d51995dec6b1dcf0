"""Time the quickstart end to end, as on a fresh machine (the GGUF conversion included).

Target (issue 2): at most 300 s on 2 CPU cores after set-up, with the tuned model naming
itself on most held-out identity questions and the base model on none.

    .venv/bin/python benchmarks/quickstart_time.py
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TUNESMITH_CACHE"] = tmp  # an empty cache: convert the GGUF as a new user does
        from tunesmith.workflows.quickstart import run_quickstart

        started = time.perf_counter()
        _, _, summary = run_quickstart(overrides=[f"output.dir={tmp}/runs"])
        wall = time.perf_counter() - started
    print(
        json.dumps(
            {
                "wall_seconds": round(wall, 1),
                "train_seconds": summary["train_seconds"],
                "held_out": summary["held_out_questions"],
                "base_says_name": summary["base_says_name"],
                "tuned_says_name": summary["tuned_says_name"],
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
