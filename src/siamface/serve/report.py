"""A ``siamface evaluate`` report folder, served on the model card (``serve --report DIR``).

The folder holds ``report.json`` and the plots it lists under ``plots`` (ROC, DET, score
histograms; see :mod:`siamface.scores.report`). Only those files are served, by kind, so a
request can never name another file. The report is read once at start-up; a folder that is not
a report is refused then, with the reason, rather than showing an empty card later.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from siamface.errors import SiamfaceError

#: File name written by ``siamface evaluate`` (siamface.scores.report.REPORT_NAME; not
#: imported from there because that module needs scikit-learn, which serving does not).
REPORT_NAME = "report.json"


@dataclass(frozen=True)
class EvaluationReport:
    folder: Path
    data: dict
    plots: dict[str, Path]  # kind ("roc", "det", "histogram") -> existing PNG file

    @classmethod
    def load(cls, folder: str | Path) -> EvaluationReport:
        folder = Path(folder).expanduser()
        path = folder / REPORT_NAME if folder.is_dir() else folder
        if not path.is_file():
            raise SiamfaceError(
                f"--report {folder}: no {REPORT_NAME} there; give the --out folder of "
                "'siamface evaluate'"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SiamfaceError(f"--report: cannot read {path}: {err}") from err
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
            raise SiamfaceError(f"--report: {path} is not a siamface evaluation report")
        plots: dict[str, Path] = {}
        listed = data.get("plots") if isinstance(data.get("plots"), dict) else {}
        for kind, name in listed.items():
            if not isinstance(name, str) or Path(name).name != name or not name.endswith(".png"):
                continue  # only plain PNG names inside the folder
            file = path.parent / name
            if file.is_file():
                plots[str(kind)] = file
        return cls(path.parent, data, plots)

    def summary(self, model_fingerprint: str) -> dict:
        """What the model card shows: headline metrics, data size, the ROC for the slider."""
        d = self.data
        model = d.get("model") if isinstance(d.get("model"), dict) else {}
        metrics = d["metrics"]
        keep = ("auc", "eer", "eer_threshold", "tar_at_far", "threshold_at_far", "best_accuracy")
        ops = d.get("operating_points") if isinstance(d.get("operating_points"), dict) else {}
        return {
            "created": d.get("created"),
            "protocol": d.get("protocol"),
            "same_model": model.get("fingerprint") == model_fingerprint,
            "model_fingerprint": model.get("fingerprint"),
            "data": _pick(d.get("data"), ("identities", "images_embedded", "roots", "pairs_file")),
            "pairs": _pick(d.get("pairs"), ("genuine_pairs", "impostor_pairs_scored")),
            "metrics": {k: metrics.get(k) for k in keep if k in metrics},
            "at_stored_threshold": ops.get("stored_threshold"),
            "roc": d.get("roc") if isinstance(d.get("roc"), dict) else None,
            "rates": _rates(d.get("rates_by_threshold")),
            "plots": {kind: f"/report/{kind}.png" for kind in self.plots},
            "notes": [n for n in d.get("notes", []) if isinstance(n, str)][:10],
        }


def _rates(table: object) -> dict | None:
    """The report's TAR/FAR-by-threshold table when it is well formed (reports written before
    it existed, or edited by hand, have none: the page then shows no rates)."""
    if not isinstance(table, dict):
        return None
    cols = [table.get(k) for k in ("threshold", "tar", "far")]
    if not all(isinstance(c, list) for c in cols) or len({len(c) for c in cols}) != 1:
        return None
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for c in cols for x in c):
        return None
    return {"threshold": cols[0], "tar": cols[1], "far": cols[2]}


def _pick(d: object, keys: tuple[str, ...]) -> dict:
    return {k: d[k] for k in keys if k in d} if isinstance(d, dict) else {}
