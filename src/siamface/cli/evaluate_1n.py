"""``siamface evaluate-1n``: closed-set rank-1/5 and open-set DIR@FAR on identity folders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from siamface.cli._model_args import MODEL_HELP
from siamface.decide.threshold import Threshold
from siamface.embed.load import create_embedder
from siamface.errors import SiamfaceError
from siamface.fileio import atomic_write, check_output_file
from siamface.folders.identities import scan_identity_folders

EPILOG = """\
Protocol: identities are split (seeded) into enrolled people and strangers. Each enrolled
person gets --enroll-images images in a gallery; their other images are genuine probes. All
images of strangers are probes of people who are not enrolled. Reported:
  rank-k      genuine probes whose own identity is among the k best matches (closed-set)
  DIR@FAR     genuine probes identified correctly with a score above the threshold at which
              a fraction FAR of stranger probes would be wrongly accepted (open-set)
Both aggregations are measured by default: 'mean' (one template per person) and 'max'
(every enrolled image, a person scored by their best image).

examples:
  siamface evaluate-1n --run runs/pins                  # the run's validation identities
  siamface evaluate-1n --model m.safetensors --data ../shared/data/att40 --strangers 10
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-1n",
        help="1:N identification metrics (rank-1/5, DIR@FAR) on identity folders",
        description="Measure 1:N identification through a real gallery.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", metavar="MODEL", help=MODEL_HELP + "")
    p.add_argument("--data", action="append", metavar="DIR", help="identity-folder root")
    p.add_argument(
        "--run",
        metavar="RUN_DIR",
        help="a training run: its model, data and validation identities (people not trained on)",
    )
    p.add_argument("--identities", metavar="FILE", help="only these identities (one a line)")
    p.add_argument("--enroll-images", type=int, default=5, help="gallery images per person")
    p.add_argument(
        "--strangers",
        type=float,
        default=1 / 3,
        help="non-enrolled identities: fraction (<1) or count (default 1/3)",
    )
    p.add_argument("--max-probes-per-id", type=int, help="cap probes per identity")
    p.add_argument("--aggregation", choices=["mean", "max", "both"], default="both")
    p.add_argument(
        "--far", type=float, action="append", help="false-alarm rates (default 0.01 0.05 0.1)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int)
    p.add_argument("--out", metavar="JSON", help="also write the report to this file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _resolve(args: argparse.Namespace) -> tuple[str, list[str], list[str] | None]:

    model, data, names = args.model, args.data, None
    if args.run:
        run_dir = Path(args.run)
        try:
            run_info = json.loads((run_dir / "run.json").read_text())
            report = json.loads((run_dir / "dataset_report.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SiamfaceError(f"{run_dir} is not a readable training run: {err}") from err
        model = model or str(run_dir)
        data = data or run_info.get("data")
        names = report.get("val_identity_names")
        if not names:
            raise SiamfaceError(f"{run_dir}/dataset_report.json lists no validation identities")
    if args.identities:
        try:
            lines = Path(args.identities).read_text().splitlines()
        except OSError as err:
            raise SiamfaceError(f"cannot read --identities file: {err}") from err
        names = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    if not model:
        raise SiamfaceError("give --model (or --run RUN_DIR)")
    if not data:
        raise SiamfaceError("give --data DIR (or --run RUN_DIR)")
    return model, data, names


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from siamface.gallery.identification import (  # lazy: --help speed (sklearn, scipy)
        DEFAULT_FARS,
        evaluate_open_set,
        split_open_set,
    )

    model_path, data, names = _resolve(args)
    if args.out:
        check_output_file(args.out, "report file")
    scan = scan_identity_folders(data)
    samples = scan.samples
    if names is not None:
        wanted = set(names)
        missing = sorted(wanted - set(scan.identities))
        if missing:
            raise SiamfaceError(f"identities not found in {data}: {', '.join(missing[:5])}")
        samples = [s for s in samples if s.identity in wanted]
    embedder = create_embedder(model_path)
    progress = not args.no_progress and not args.json
    emb, errors = embedder.embed_paths(
        [s.path for s in samples],
        batch_size=args.batch_size,
        workers=args.workers,
        progress=progress,
    )
    kept = [s for i, s in enumerate(samples) if i not in errors]
    labels = [s.identity for s in kept]
    split = split_open_set(
        labels, args.strangers, args.enroll_images, args.max_probes_per_id, args.seed
    )
    fars = tuple(args.far) if args.far else DEFAULT_FARS
    stored = Threshold.parse(embedder.threshold)
    thr = None if stored is None else stored.value
    aggs = ["mean", "max"] if args.aggregation == "both" else [args.aggregation]
    results = {
        a: evaluate_open_set(
            np.asarray(emb),
            split,
            embedder.fingerprint,
            a,
            thr,
            fars,
            refs=[str(s.path) for s in kept],
        )
        for a in aggs
    }
    best = max(results, key=lambda a: (results[a].rank["1"], _mean_dir(results[a])))
    report = {
        "model": str(model_path),
        "fingerprint": embedder.fingerprint,
        "data": [str(d) for d in data],
        "identities": len(set(labels)),
        "unreadable": len(errors),
        "split": split.summary(),
        "enroll_images": args.enroll_images,
        "seed": args.seed,
        "model_threshold": thr,
        "results": {a: m.to_dict() for a, m in results.items()},
        "best_aggregation": best,
    }
    if args.out:
        text = json.dumps(report, indent=1)
        atomic_write(Path(args.out), lambda p: p.write_text(text, encoding="utf-8"))
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    s = split.summary()
    print(
        f"{report['identities']} identities: {s['enrolled_identities']} enrolled "
        f"({s['enrolled_images']} images), {s['stranger_identities']} strangers; probes: "
        f"{s['genuine_probes']} genuine, {s['stranger_probes']} strangers"
    )
    for m in results.values():
        print("  " + m.headline())
        if m.at_threshold:
            a = m.at_threshold
            print(
                f"    at the model's threshold {a['threshold']:.4f}: DIR {a['dir']:.3f}, "
                f"FAR {a['far']:.3f}"
            )
        for n in m.notes:
            print(f"    note: {n}", file=sys.stderr)
    if len(results) > 1:
        print(f"better aggregation here: {best}")
    return 0


def _mean_dir(m) -> float:
    vals = [v for v in m.dir_at_far.values() if v is not None]
    return sum(vals) / len(vals) if vals else 0.0
