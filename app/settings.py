"""What the app remembers between runs (QSettings): choices of the control panel, recent projects."""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtCore import QSettings, QStandardPaths

ORG, APP = "AvatarStudio", "Avatar Studio"
MAX_RECENT = 8

DEFAULTS = {
    "preset": "fast",
    "minutes": 5.0,
    "steps": 300,
    "device": "cpu",
    "body_model": "anny",
    "body_model_dir": "",
    "resolution": 540,
    "overrides": "{}",
    "prior": "",
    "prior_mode": "refine",
    "recent": "[]",
    "last_dir": "",
    "bake_size": 2048,
    "bake_after_run": 0,  # 0/1: QSettings' INI files give booleans back as strings
}


def data_dir() -> Path:
    """The user's data folder of the app (demo scene, new projects)."""
    p = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    return Path(p or Path.home() / ".local" / "share" / APP)


class Settings:
    """Typed access to QSettings (a separate file per organisation/application name)."""

    def __init__(self, qsettings: QSettings | None = None) -> None:
        self.q = qsettings or QSettings(ORG, APP)

    def get(self, key: str):
        default = DEFAULTS[key]
        v = self.q.value(key, default)
        try:
            return type(default)(v)
        except (TypeError, ValueError):
            return default

    def set(self, key: str, value) -> None:
        self.q.setValue(key, value)

    @property
    def overrides(self) -> dict:
        try:
            d = json.loads(self.get("overrides"))
            return d if isinstance(d, dict) else {}
        except ValueError:
            return {}

    @overrides.setter
    def overrides(self, d: dict) -> None:
        self.set("overrides", json.dumps(d))

    @property
    def recent(self) -> list[str]:
        try:
            return [str(p) for p in json.loads(self.get("recent"))][:MAX_RECENT]
        except (ValueError, TypeError):
            return []

    def add_recent(self, path: str | Path) -> None:
        p = str(Path(path).resolve())
        self.set("recent", json.dumps([p] + [r for r in self.recent if r != p][: MAX_RECENT - 1]))

    def remove_recent(self, path: str) -> None:
        self.set("recent", json.dumps([r for r in self.recent if r != path]))
