"""Identity folders of raw photos -> identity folders of aligned face crops (``siamface prepare``).

Detection is the slow step of a face pipeline and its result never changes for a given photo,
so it is done once, in parallel on every core, and its output is an ordinary identity-folder
tree that ``siamface train`` reads like any other. A marker file records the alignment
settings so that a model trained on the tree knows it expects aligned faces (and which ones).

The run is resumable: every finished image is appended to a log in ``OUT_DIR``, and crops are
written atomically, so after a crash or Ctrl-C the same command skips what is done. Bad files
(no face, unreadable, truncated, absurd sizes) are listed in the report; none stops the batch.
The input tree is only ever read.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from siamface.errors import OutputError, SiamfaceError
from siamface.faces.align import AlignParams, find_faces, warp_face
from siamface.faces.choose import choose_face
from siamface.faces.detect import get_detector, refine_face
from siamface.faces.errors import NoFaceError
from siamface.fileio import atomic_write, check_output_dir, output_error
from siamface.folders.identities import scan_identity_folders
from siamface.folders.images import ImageLoadError, load_rgb
from siamface.folders.marker import (
    MARKER_FORMAT,
    MARKER_NAME,
    MARKER_VERSION,
    REPORT_NAME,
    read_marker,
    write_marker,
)
from siamface.system import usable_cpus
from siamface.version import __version__

__all__ = ["MARKER_NAME", "REPORT_NAME", "PrepareOptions", "prepare_folders", "read_marker"]

#: Per-image results, one JSON object per line, appended as images finish (resume state).
#: Hidden so that folder scans never mistake it for data.
LOG_NAME = ".siamface_prepare_log.jsonl"
IMAGE_FORMATS = {"png": ".png", "jpg": ".jpg"}
#: What prepare does with a photo whose face is ambiguous (two equally likely people): leave
#: it out and list it (a wrong face is a wrong label), or use the ``auto`` rule's winner.
AMBIGUOUS_CHOICES = ("skip", "use")
#: Chosen faces smaller than this (pixels, in the photo) are upscaled a lot: reported.
SMALL_FACE_PX = 32


@dataclass(frozen=True)
class PrepareOptions:
    """Settings of one ``prepare`` run; all but ``workers`` must match when resuming."""

    image_size: int = 112
    align: AlignParams = field(default_factory=AlignParams)
    low_score: float = 0.8
    image_format: str = "png"
    workers: int | None = None  # None = all cores
    ambiguous: str = "skip"

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 1024:
            raise SiamfaceError(f"output size must be in [16, 1024], got {self.image_size}")
        if self.image_format not in IMAGE_FORMATS:
            raise SiamfaceError(
                f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {self.image_format!r}"
            )
        if not 0.0 <= self.low_score <= 1.0:
            raise SiamfaceError(f"low score must be in [0, 1], got {self.low_score}")
        if self.ambiguous not in AMBIGUOUS_CHOICES:
            raise SiamfaceError(
                f"ambiguous must be one of {', '.join(AMBIGUOUS_CHOICES)}, got {self.ambiguous!r}"
            )
        if self.workers is not None and self.workers < 1:
            raise SiamfaceError(f"workers must be >= 1, got {self.workers}")

    def settings(self) -> dict:
        """What the output depends on (compared when resuming into an existing OUT_DIR)."""
        return {
            "align": self.align.to_dict(),
            "image_size": self.image_size,
            "image_format": self.image_format,
            "ambiguous": self.ambiguous,
        }


def _write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a reader never sees half a file."""
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=1), encoding="utf-8"))


# --------------------------------------------------------------------------- worker side

_WORKER: dict = {}


def _init_worker(options: PrepareOptions, out_dir: Path) -> None:
    _WORKER["options"] = options
    _WORKER["out_dir"] = out_dir


def _init_pool_worker(options: PrepareOptions, out_dir: Path) -> None:
    # One process per core already: libraries must not each start a thread per core too.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    _init_worker(options, out_dir)


def _save_atomic(arr, path: Path, image_format: str) -> None:
    img = Image.fromarray(arr)
    if image_format == "jpg":
        atomic_write(path, lambda tmp: img.save(tmp, format="JPEG", quality=95))
    else:
        atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def process_image(task: tuple[str, str, str, str]) -> dict:
    """Detect, choose, align and save the face(s) of one photo -> its log record.

    ``task`` is (source path, identity, source path relative to RAW_DIR, output path stem
    relative to OUT_DIR). Never raises for a bad image: the record's ``status`` says what
    happened (``ok``, ``no_face``, ``unreadable`` or ``error``).
    """
    src, identity, rel, out_stem = task
    opts: PrepareOptions = _WORKER["options"]
    out_root: Path = _WORKER["out_dir"]
    rec: dict = {"src": rel, "identity": identity}
    try:
        st = os.stat(src)
        rec["bytes"], rec["mtime_ns"] = st.st_size, st.st_mtime_ns
    except OSError as err:
        if os.path.islink(src):
            reason = f"broken symbolic link (target {os.readlink(src)} missing)"
        else:
            reason = f"cannot stat ({err.strerror})"
        return {**rec, "status": "unreadable", "reason": reason}
    try:
        img = load_rgb(src)
    except ImageLoadError as err:
        return {**rec, "status": "unreadable", "reason": str(err)}
    try:
        rec["width"], rec["height"] = img.size
        faces = find_faces(img, opts.align)
        choice = choose_face(faces, img.size, opts.align.face)
        rec["faces"] = len(faces) - len(choice.merged)
        if not faces:
            return {**rec, "status": "no_face"}
        rec["several_faces"] = choice.several
        if choice.several:
            rec["boxes"] = [[round(v, 1) for v in f.box] for f in choice.faces]
        if opts.align.face == "all":
            chosen = [f for i, f in enumerate(choice.faces) if i not in choice.merged]
        elif choice.ambiguous and opts.ambiguous == "skip":
            return {**rec, "status": "ambiguous", "reason": choice.ambiguity()}
        else:
            assert choice.face is not None
            chosen = [choice.face]
        det = get_detector(opts.align.detector, opts.align.min_score)
        chosen = [refine_face(img, f, det, opts.align.max_side) for f in chosen]
        ext = IMAGE_FORMATS[opts.image_format]
        outputs = []
        for k, face in enumerate(chosen):
            name = f"{out_stem}_face{k}{ext}" if opts.align.face == "all" else out_stem + ext
            arr = warp_face(img, face.landmarks, opts.image_size, opts.align.margin)
            _save_atomic(arr, out_root / name, opts.image_format)
            outputs.append(name)
        rec["score"] = round(min(f.score for f in chosen), 3)
        rec["face_px"] = round(min(f.size for f in chosen), 1)
        rec["box"] = [round(v, 1) for v in chosen[0].box]
        rec["low_score"] = rec["score"] < opts.low_score
        rec["small_face"] = rec["face_px"] < SMALL_FACE_PX
        return {**rec, "status": "ok", "outputs": outputs}
    except NoFaceError as err:  # e.g. landmarks that fall outside the photo
        return {**rec, "status": "no_face", "reason": str(err)}
    except SiamfaceError:
        # Environment problems (detector missing, output not writable: a full disk fails
        # every image alike) stop the run with their message.
        raise
    except Exception as err:  # noqa: BLE001 - one odd photo must not stop a batch
        return {**rec, "status": "error", "reason": f"{type(err).__name__}: {err}"}


# --------------------------------------------------------------------------- main side


def _check_dirs(raw: Path, out: Path) -> None:
    if not raw.exists():
        raise SiamfaceError(f"input folder not found: {raw}")
    if not raw.is_dir():
        raise SiamfaceError(f"input path is not a folder: {raw}")
    r, o = raw.resolve(), out.resolve()
    if r == o or r in o.parents:
        raise SiamfaceError(
            f"output folder {out} is inside the input folder {raw}; the input is never "
            "modified, choose an output folder outside it"
        )
    if o in r.parents:
        raise SiamfaceError(f"input folder {raw} is inside the output folder {out}")
    check_output_dir(out)  # a file there, a read-only folder, a full disk: refused now


def _plan(raw: Path) -> tuple[list[tuple[str, str, str, str]], list[tuple[Path, str]]]:
    """(tasks, ignored files and empty identity folders) for every image under
    RAW_DIR/<identity>/."""
    scan = scan_identity_folders([raw])
    planned: list[tuple[str, str, Path]] = []
    for s in scan.samples:
        rel = s.path.relative_to(raw)
        planned.append((str(s.path), s.identity, rel))
    stems = Counter(str(rel.with_suffix("")) for _, _, rel in planned)
    tasks = []
    for src, identity, rel in planned:
        # a.jpg and a.png in one folder would both become a.png: keep the suffix then.
        stem = str(rel.with_suffix("")) if stems[str(rel.with_suffix(""))] == 1 else str(rel)
        tasks.append((src, identity, str(rel), stem))
    return tasks, scan.ignored


def _load_log(out: Path) -> dict[str, dict]:
    records: dict[str, dict] = {}
    path = out / LOG_NAME
    if not path.is_file():
        return records
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
                records[rec["src"]] = rec
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash: that image is simply redone
    return records


def _is_done(task: tuple[str, str, str, str], rec: dict | None, out: Path, opts) -> bool:
    src, _, _, stem = task
    try:
        st = os.stat(src)
    except OSError:
        return False
    if rec is not None:
        same_file = rec.get("bytes") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns
        if same_file and rec.get("status") in ("ok", "no_face", "ambiguous", "unreadable"):
            return all((out / o).is_file() for o in rec.get("outputs", []))
        return False
    # No log entry (log lost, or a crash between the worker's save and the log line): the
    # crop may be fine, but its record (score, box, several faces...) is not, and the report
    # is built from records. Process the photo again, so no record is ever missing.
    return False


def _run_tasks(tasks: list, opts: PrepareOptions, out: Path, progress: bool) -> Iterable[dict]:
    workers = opts.workers or usable_cpus()
    workers = max(1, min(workers, len(tasks)))
    bar = tqdm(total=len(tasks), desc="aligning", unit="img", disable=not progress)
    try:
        if workers == 1 or len(tasks) <= 4:
            _init_worker(opts, out)
            for t in tasks:
                yield process_image(t)
                bar.update()
            return
        # Not fork: the caller may hold torch thread pools, which do not survive a fork.
        method = "forkserver" if sys.platform.startswith("linux") else "spawn"
        ctx = multiprocessing.get_context(method)
        chunk = max(1, min(16, len(tasks) // (workers * 8)))
        with ctx.Pool(workers, initializer=_init_pool_worker, initargs=(opts, out)) as pool:
            for rec in pool.imap_unordered(process_image, tasks, chunksize=chunk):
                yield rec
                bar.update()
    finally:
        bar.close()


def prepare_folders(
    raw_dir: str | Path,
    out_dir: str | Path,
    options: PrepareOptions | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Align every photo of ``RAW_DIR/<identity>/`` into ``OUT_DIR/<identity>/``.

    Returns the report (also written to ``OUT_DIR/siamface_prepare_report.json``). Raises
    :class:`SiamfaceError` for unusable folders, a settings mismatch with an earlier run in
    the same ``OUT_DIR``, a missing detector, or when no face at all could be prepared.
    """

    opts = options or PrepareOptions()
    raw, out = Path(raw_dir).expanduser(), Path(out_dir).expanduser()
    _check_dirs(raw, out)
    get_detector(opts.align.detector, opts.align.min_score)
    tasks, ignored = _plan(raw)
    marker = read_marker(out) if out.is_dir() else None
    if marker is not None:
        previous = {k: marker.get(k) for k in opts.settings()}
        if previous != opts.settings():
            changed = [k for k in previous if previous[k] != opts.settings()[k]]
            raise SiamfaceError(
                f"{out} was prepared with other settings ({', '.join(changed)}: "
                f"{json.dumps({k: previous[k] for k in changed})}); use the same options to "
                "resume, or a new output folder"
            )
    elif out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise SiamfaceError(
            f"output folder {out} is not empty and was not made by 'siamface prepare'; "
            "choose a new or empty folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    base_marker = {
        "format": MARKER_FORMAT,
        "version": MARKER_VERSION,
        "aligned": True,
        "align": opts.align.to_dict(),
        "image_size": opts.image_size,
        "detector": opts.align.detector,
        "image_format": opts.image_format,
        "ambiguous": opts.ambiguous,
        "source": str(raw.resolve()),
        "siamface_version": __version__,
        "created": (marker or {}).get("created") or datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_marker(out, {**base_marker, "complete": False})

    previous_records = _load_log(out)
    ext = IMAGE_FORMATS[opts.image_format]
    done, pending = [], []
    for t in tasks:
        rec = previous_records.get(t[2])
        (done if _is_done(t, rec, out, opts) else pending).append(
            (t, rec or {"src": t[2], "identity": t[1], "status": "ok", "outputs": [t[3] + ext]})
        )
    say = log or (lambda msg: print(msg, file=sys.stderr))
    if done:
        say(f"resuming: {len(done)} of {len(tasks)} images already done, {len(pending)} to go")
    t0 = time.perf_counter()
    records = {t[2]: {**rec, "resumed": True} for t, rec in done}
    try:
        with open(out / LOG_NAME, "a") as logf:
            for rec in _run_tasks([t for t, _ in pending], opts, out, progress):
                records[rec["src"]] = rec
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
    except OutputError:
        raise
    except OSError as err:  # the resume log: on a full disk, stop (the crops are kept)
        raise output_error(out / LOG_NAME, err) from err
    seconds = time.perf_counter() - t0
    ordered = [records[t[2]] for t in tasks]
    report = _build_report(raw, out, opts, ordered, ignored, seconds, len(pending))
    _write_json(out / REPORT_NAME, report)
    write_marker(out, {**base_marker, "complete": True, "counts": report["counts"]})
    if report["counts"]["crops_written"] + report["counts"]["done_before"] == 0:
        raise SiamfaceError(
            f"no face could be prepared from any of the {len(tasks)} images in {raw}; "
            f"see {out / REPORT_NAME}"
        )
    return report


def _build_report(raw, out, opts, records, ignored, seconds, processed) -> dict:
    fresh = [r for r in records if not r.get("resumed")]
    status = Counter(r["status"] for r in records)
    problems = {
        "no_face": [r["src"] for r in records if r["status"] == "no_face"],
        "ambiguous": [
            {"path": r["src"], "reason": r.get("reason", "")}
            for r in records
            if r["status"] == "ambiguous"
        ],
        "unreadable": [
            {"path": r["src"], "reason": r.get("reason", "")}
            for r in records
            if r["status"] in ("unreadable", "error")
        ],
        "several_faces": [
            {"path": r["src"], "faces": r.get("faces")} for r in records if r.get("several_faces")
        ],
        "low_score": [
            {"path": r["src"], "score": r.get("score")} for r in records if r.get("low_score")
        ],
        "small_face": [
            {"path": r["src"], "face_px": r.get("face_px")} for r in records if r.get("small_face")
        ],
    }
    counts = {
        "images": len(records),
        "identities": len({r["identity"] for r in records}),
        "processed_now": processed,
        "done_before": len(records) - len(fresh),
        "crops_written": sum(len(r.get("outputs", [])) for r in fresh if r["status"] == "ok"),
        "ok": status["ok"],
        "no_face": status["no_face"],
        "ambiguous": status["ambiguous"],
        "unreadable": status["unreadable"] + status["error"],
        "several_faces": len(problems["several_faces"]),
        "low_score": len(problems["low_score"]),
        "small_face": len(problems["small_face"]),
        "ignored_files": len(ignored),
    }
    return {
        "raw_dir": str(raw),
        "out_dir": str(out),
        "settings": opts.settings(),
        "low_score_threshold": opts.low_score,
        "workers": opts.workers or usable_cpus(),
        "seconds": round(seconds, 2),
        "seconds_per_image": round(seconds / processed, 4) if processed else None,
        "counts": counts,
        "problems": problems,
        "ignored_files": [{"path": str(p), "reason": r} for p, r in ignored],
        "images": records,
    }


def summary_lines(report: dict, limit: int = 5) -> list[str]:
    """A short terminal summary of a prepare report."""
    c, p = report["counts"], report["problems"]
    lines = [
        f"prepared {c['ok']} of {c['images']} images ({c['identities']} identities) into "
        f"{report['out_dir']}: {c['crops_written']} crops written now, "
        f"{c['done_before']} done before",
    ]
    if c["processed_now"]:
        lines.append(
            f"time: {report['seconds']:.1f} s ({1000 * report['seconds_per_image']:.1f} ms "
            f"per image, {report['workers']} workers)"
        )

    def listing(title: str, items: list, fmt: Callable[[object], str]) -> None:
        if items:
            lines.append(f"{title}: {len(items)}")
            lines.extend(f"  - {fmt(i)}" for i in items[:limit])
            if len(items) > limit:
                lines.append(f"  ... {len(items) - limit} more in the report")

    listing(
        "not used (not an image, or an empty identity folder)",
        report.get("ignored_files", []),
        lambda i: f"{i['path']}: {i['reason']}",
    )
    listing("no face found (skipped)", p["no_face"], str)
    listing(
        "several faces, none clearly the person (skipped; --ambiguous use takes the likelier)",
        p.get("ambiguous", []),
        lambda i: f"{i['path']}: {i['reason']}",
    )
    listing("unreadable (skipped)", p["unreadable"], lambda i: f"{i['path']}: {i['reason']}")
    policy = report["settings"]["align"]["face"]
    listing(
        f"several faces ({'all kept' if policy == 'all' else policy + ' used'})",
        p["several_faces"],
        lambda i: f"{i['path']} ({i['faces']} faces)",
    )
    listing(
        f"low detector score (< {report['low_score_threshold']})",
        p["low_score"],
        lambda i: f"{i['path']} ({i['score']})",
    )
    listing(
        f"small faces (< {SMALL_FACE_PX} px, upscaled)",
        p["small_face"],
        lambda i: f"{i['path']} ({i['face_px']} px)",
    )
    lines.append(f"report: {Path(report['out_dir']) / REPORT_NAME}")
    return lines
