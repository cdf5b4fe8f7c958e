"""The run directory: what a run writes where, and what a resume reads back.

``run.json`` (config + data folders + version) and ``config.yaml`` are written once when a run
starts; ``--resume`` reads ``run.json`` to rebuild the same run. Every write is atomic, so a
kill at any moment leaves the previous version of a file, never half of one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from siamface.errors import SiamfaceError
from siamface.fileio import atomic_write

RUN_META = "run.json"


class RunDir:
    """Paths and small JSON/YAML files of one training run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write(
            self.path / name,
            lambda p: p.write_text(json.dumps(obj, indent=1, ensure_ascii=False)),
        )

    def write_meta(self, config: dict[str, Any], data_dirs: list[str], version: str) -> None:
        """Record what a resume needs to rebuild this run."""
        self.write_json(RUN_META, {"config": config, "data": data_dirs, "siamface": version})
        atomic_write(
            self.path / "config.yaml",
            lambda p: p.write_text(yaml.safe_dump(config, sort_keys=False)),
        )

    def read_meta(self) -> dict[str, Any]:
        meta_path = self.path / RUN_META
        if not meta_path.is_file():
            raise SiamfaceError(f"{self.path} is not a siamface run directory (no {RUN_META})")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise SiamfaceError(f"cannot read {meta_path}: {err}") from err
        if not isinstance(meta, dict) or not {"config", "data"} <= set(meta):
            raise SiamfaceError(f"{meta_path} is damaged: expected 'config' and 'data' entries")
        return meta
