"""Ultralytics, imported offline: no font, weight or asset downloads, no pip installs, no
analytics. Every vision module gets Ultralytics through `require_ultralytics()`.

Ultralytics reads its environment once, when it is imported, so the settings are made first:
- `YOLO_OFFLINE=1`: its online check answers False (no DNS probes, no events, no update check);
- `YOLO_AUTOINSTALL=false`: a missing requirement is a warning, never a `pip install`;
- `YOLO_CONFIG_DIR`: its settings and fonts live in tunesmith's cache, not ~/.config. Every
  dataset check (and PIL labels) asks `check_font` for Arial.ttf / Arial.Unicode.ttf, which
  looks in YOLO_CONFIG_DIR/Ultralytics/ before it tries a download; matplotlib's bundled DejaVu
  Sans is put there under both names, so the lookup never reaches the network
  (tests/test_vision_models.py records every DNS lookup and connection of a training run).
A user's own values of these variables are kept (setdefault).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tunesmith.models.resolve import cache_dir
from tunesmith.utils.errors import TunesmithError

FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
NEEDS = (
    "install the vision extra (pip install 'tunesmith[vision]') with "
    "torch==2.14.1 torchvision==0.29.1"
)


def offline_settings() -> Path:
    """Set the environment Ultralytics reads at import; returns its user config folder."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    config = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir() / "ultralytics")))
    user_dir = config.expanduser() / "Ultralytics"  # Ultralytics' USER_CONFIG_DIR
    user_dir.mkdir(parents=True, exist_ok=True)
    _local_fonts(user_dir)
    return user_dir


def _local_fonts(folder: Path) -> None:
    import matplotlib

    bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in FONT_NAMES:
        if not (folder / name).is_file() and bundled.is_file():
            shutil.copyfile(bundled, folder / name)


def require_ultralytics():
    """The `ultralytics` module, imported offline; one sentence when it cannot be imported."""
    offline_settings()
    try:
        import torchvision  # noqa: F401  (its failure names the real cause; Ultralytics' hides it)
        import ultralytics
    except ImportError as exc:
        raise TunesmithError(f"tunesmith vision needs Ultralytics: {NEEDS} ({exc})") from None
    except (RuntimeError, AttributeError, OSError) as exc:  # torchvision built for another torch
        raise TunesmithError(
            f"tunesmith vision needs a torchvision that matches torch: {NEEDS} ({exc})"
        ) from None
    from ultralytics import settings

    if settings.get("sync"):  # analytics off for good, not only while offline
        settings.update(sync=False)
    return ultralytics


def vision_available() -> str | None:
    """None when Ultralytics imports; else the sentence saying what is missing (tests skip)."""
    try:
        require_ultralytics()
    except TunesmithError as exc:
        return str(exc)
    return None
