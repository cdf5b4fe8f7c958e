"""The LFW ``pairs.txt`` protocol: read, write and generate pair files; 10-fold accuracy.

File format (as distributed with LFW, View 2)::

    10<TAB>300                  folds, pairs of each kind per fold
    name<TAB>1<TAB>4            same person: images 1 and 4 of ``name``
    ...                         (per fold: ``n`` same-person lines, then ``n`` different)
    name1<TAB>2<TAB>name2<TAB>7 different people

A header with a single number ``n`` means one fold. Fields may be separated by tabs or spaces.
Image ``i`` of ``name`` is ``name/name_000i.<ext>`` when such a file exists (LFW naming);
otherwise it is the i-th image file (1-based) of ``name/`` in sorted order, which is how
:func:`make_pairs` numbers images of folders that do not follow the LFW naming.

10-fold accuracy follows the LFW convention: for each fold, the threshold maximising accuracy
on the other nine folds is applied to it; the report gives the mean and standard deviation of
the ten accuracies (and the standard error, which LFW's own tables use).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from siamface.errors import SiamfaceError
from siamface.fileio import atomic_write
from siamface.folders.images import is_image_path


@dataclass(frozen=True)
class Pair:
    """One line of a pairs file, resolved or not: (name_a, index_a, name_b, index_b)."""

    name_a: str
    index_a: int
    name_b: str
    index_b: int
    fold: int
    line: int

    @property
    def same(self) -> bool:
        return self.name_a == self.name_b


@dataclass
class PairsFile:
    folds: int
    per_fold: int
    pairs: list[Pair] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return np.array([p.same for p in self.pairs], dtype=bool)

    @property
    def fold_ids(self) -> np.ndarray:
        return np.array([p.fold for p in self.pairs], dtype=np.int64)


def _bad(path: Path, line: int, msg: str) -> SiamfaceError:
    return SiamfaceError(f"{path}, line {line}: {msg}")


def _index(path: Path, line: int, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise _bad(path, line, f"image number must be a positive integer, got {text!r}")
    return int(text)


def read_pairs(path: str | Path) -> PairsFile:
    """Parse a pairs file; malformed lines raise :class:`SiamfaceError` naming file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SiamfaceError(f"pairs file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise SiamfaceError(f"{path} is not a UTF-8 text pairs file ({err})") from err
    rows = [(i + 1, ln.split()) for i, ln in enumerate(lines) if ln.strip()]
    if not rows:
        raise SiamfaceError(f"{path} is empty")
    head_line, head = rows[0]
    if not 1 <= len(head) <= 2 or not all(h.isdigit() and int(h) > 0 for h in head):
        raise _bad(
            path, head_line, f"expected a header 'folds<TAB>pairs_per_fold', got {' '.join(head)!r}"
        )
    folds, per_fold = (1, int(head[0])) if len(head) == 1 else (int(head[0]), int(head[1]))
    body = rows[1:]
    expected = folds * per_fold * 2
    if len(body) != expected:
        raise SiamfaceError(
            f"{path}: header says {folds} fold(s) x {per_fold} same + {per_fold} different "
            f"pairs = {expected} lines, but the file has {len(body)} pair lines"
        )
    out = PairsFile(folds, per_fold)
    for k, (ln, f) in enumerate(body):
        fold, pos = divmod(k, 2 * per_fold)
        want_same = pos < per_fold
        if len(f) == 3:
            if not want_same:
                raise _bad(path, ln, "expected a different-person line 'name1 i name2 j'")
            out.pairs.append(
                Pair(f[0], _index(path, ln, f[1]), f[0], _index(path, ln, f[2]), fold, ln)
            )
        elif len(f) == 4:
            if want_same:
                raise _bad(path, ln, "expected a same-person line 'name i j'")
            if f[0] == f[2]:
                raise _bad(path, ln, f"different-person line names the same person {f[0]!r}")
            out.pairs.append(
                Pair(f[0], _index(path, ln, f[1]), f[2], _index(path, ln, f[3]), fold, ln)
            )
        else:
            raise _bad(path, ln, f"expected 3 fields (same person) or 4 (different), got {len(f)}")
    return out


def write_pairs(pf: PairsFile, path: str | Path) -> Path:
    """Write ``pf`` in the LFW format (atomically)."""
    lines = [f"{pf.folds}\t{pf.per_fold}"]
    for p in pf.pairs:
        if p.same:
            lines.append(f"{p.name_a}\t{p.index_a}\t{p.index_b}")
        else:
            lines.append(f"{p.name_a}\t{p.index_a}\t{p.name_b}\t{p.index_b}")
    path = Path(path)
    atomic_write(path, lambda t: t.write_text("\n".join(lines) + "\n", encoding="utf-8"))
    return path


class ImageIndex:
    """Resolves (name, i) to an image file under a root, with LFW naming or sorted order."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise SiamfaceError(f"data folder not found: {self.root}")
        self._listing: dict[str, list[Path]] = {}
        self._lfw: dict[str, dict[int, Path]] = {}

    def files(self, name: str) -> list[Path]:
        """Image files of ``name`` in sorted order (empty when there is no such folder)."""
        if name not in self._listing:
            d = self.root / name
            files = (
                sorted(f for f in d.iterdir() if f.is_file() and is_image_path(f))
                if d.is_dir()
                else []
            )
            lfw: dict[int, Path] = {}
            pattern = re.compile(rf"{re.escape(name)}_(\d+)\.\w+")
            for f in files:
                m = pattern.fullmatch(f.name)
                if m:
                    lfw.setdefault(int(m.group(1)), f)
            self._listing[name], self._lfw[name] = files, lfw
        return self._listing[name]

    def resolve(self, name: str, i: int) -> Path | None:
        files = self.files(name)
        if i in self._lfw[name]:
            return self._lfw[name][i]
        return files[i - 1] if 0 < i <= len(files) else None

    def numbers(self, name: str) -> list[int]:
        """Indices that resolve to distinct files of ``name`` (each file once)."""
        files = self.files(name)
        out: dict[Path, int] = {}
        for num, f in self._lfw[name].items():
            out.setdefault(f, num)
        for pos, f in enumerate(files, start=1):
            if f not in out and self.resolve(name, pos) == f:
                out[f] = pos
        return sorted(out.values())


def resolve_pairs(pf: PairsFile, root: str | Path, source: Path) -> list[tuple[Path, Path]]:
    """Image paths of every pair; a missing person or image is an error naming the line."""
    index = ImageIndex(root)
    out = []
    for p in pf.pairs:
        pair = []
        for name, i in ((p.name_a, p.index_a), (p.name_b, p.index_b)):
            f = index.resolve(name, i)
            if f is None:
                n = len(index.files(name))
                why = (
                    f"no folder {index.root / name}"
                    if not (index.root / name).is_dir()
                    else f"{index.root / name} has {n} image(s), no image number {i} "
                    f"(and no file {name}_{i:04d}.jpg)"
                )
                raise _bad(source, p.line, f"image {name} {i} not found: {why}")
            pair.append(f)
        out.append((pair[0], pair[1]))
    return out


def make_pairs(root: str | Path, folds: int = 10, per_fold: int = 300, seed: int = 0) -> PairsFile:
    """Generate a pairs file for any identity-folder set, LFW style (see :func:`draw_pairs`).
    Seeded: same inputs, same file."""
    if folds < 1 or per_fold < 1:
        raise SiamfaceError("--folds and --per-fold must be at least 1")
    index = ImageIndex(root)
    names = sorted(
        d.name for d in index.root.iterdir() if d.is_dir() and not d.name.startswith(".")
    )
    numbered: dict[str, list[int]] = {}
    for name in names:
        if any(c.isspace() for c in name):
            continue  # cannot be written in a whitespace-separated file
        nums = index.numbers(name)
        if nums:
            numbered[name] = nums
    return draw_pairs(numbered, folds, per_fold, seed, where=str(index.root))


def draw_pairs(
    numbered: dict[str, list[int]], folds: int, per_fold: int, seed: int, where: str = "the data"
) -> PairsFile:
    """LFW-style pairs over people and their image numbers (``{name: [1, 2, ...]}``).

    People are split into ``folds`` disjoint groups (as in LFW, a person appears in one fold
    only, so each fold's threshold is tested on strangers). Each fold gets ``per_fold``
    same-person pairs (a random person, then a random unused pair of their images) and
    ``per_fold`` different-person pairs (two random people of the fold, a random image each).
    No pair appears twice. Kept apart from the folder index so that an evaluation can draw
    pairs over images it has already embedded (:mod:`siamface.scores.kfold_draws`).
    """
    if folds < 1 or per_fold < 1:
        raise SiamfaceError("--folds and --per-fold must be at least 1")
    if len(numbered) < 2 * folds:
        raise SiamfaceError(
            f"{where}: {len(numbered)} usable identities, need at least 2 per fold "
            f"({2 * folds} for {folds} folds); use fewer --folds"
        )
    rng = random.Random(seed)
    people = sorted(numbered)
    rng.shuffle(people)
    groups = [sorted(people[k::folds]) for k in range(folds)]
    pf = PairsFile(folds, per_fold)
    for fold, group in enumerate(groups):
        pf.pairs += _same_pairs(numbered, group, per_fold, fold, rng, where)
        pf.pairs += _diff_pairs(numbered, group, per_fold, fold, rng, where)
    return pf


def _same_pairs(numbered, group, n, fold, rng, root) -> list[Pair]:
    avail = {p: len(numbered[p]) * (len(numbered[p]) - 1) // 2 for p in group}
    if sum(avail.values()) < n:
        raise SiamfaceError(
            f"{root}: fold {fold + 1} has only {sum(avail.values())} distinct same-person "
            f"pairs, need {n}; use a smaller --per-fold or fewer --folds"
        )
    used: set[tuple[str, int, int]] = set()
    out: list[Pair] = []
    while len(out) < n:
        people = [p for p in group if avail[p] > 0]
        p = rng.choice(people)
        i, j = sorted(rng.sample(numbered[p], 2))
        if (p, i, j) in used:
            continue
        used.add((p, i, j))
        avail[p] -= 1
        out.append(Pair(p, i, p, j, fold, 0))
    return out


def _diff_pairs(numbered, group, n, fold, rng, root) -> list[Pair]:
    total = sum(len(numbered[a]) * len(numbered[b]) for a in group for b in group if a < b)
    if total < n:
        raise SiamfaceError(
            f"{root}: fold {fold + 1} has only {total} distinct different-person pairs, "
            f"need {n}; use a smaller --per-fold"
        )
    used: set[tuple[str, int, str, int]] = set()
    out: list[Pair] = []
    while len(out) < n:
        a, b = sorted(rng.sample(group, 2))
        i, j = rng.choice(numbered[a]), rng.choice(numbered[b])
        key = (a, i, b, j)
        if key in used:
            continue
        used.add(key)
        out.append(Pair(a, i, b, j, fold, 0))
    return out


# ---------------------------------------------------------------------- 10-fold accuracy
def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Threshold maximising plain accuracy of ``score >= t`` and that accuracy.

    Candidates are midpoints between consecutive distinct scores (and one below / above
    all), so the result does not depend on a grid; ties go to the lowest threshold.
    """
    s = np.asarray(scores, np.float64)
    y = np.asarray(same, bool)
    u = np.unique(s)
    cands = np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1e-6]])
    order = np.argsort(s, kind="stable")
    ss, yy = s[order], y[order]
    # pairs accepted at candidate c are those with score >= c
    below = np.searchsorted(ss, cands, side="left")  # rejected count
    gen_rejected = np.concatenate([[0], np.cumsum(yy)])[below]
    imp_rejected = below - gen_rejected
    correct = (y.sum() - gen_rejected) + imp_rejected
    k = int(np.argmax(correct))
    return float(cands[k]), float(correct[k] / len(s))


@dataclass
class KFoldResult:
    accuracies: list[float]
    thresholds: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies))

    def to_dict(self) -> dict:
        k = len(self.accuracies)
        return {
            "folds": k,
            "accuracy_mean": self.mean,
            "accuracy_std": self.std,
            "accuracy_sem": float(np.std(self.accuracies, ddof=1) / np.sqrt(k)) if k > 1 else None,
            "fold_accuracies": self.accuracies,
            "fold_thresholds": self.thresholds,
            "threshold_mean": float(np.mean(self.thresholds)),
        }


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: Sequence[int]) -> KFoldResult:
    """LFW-style accuracy: per fold, threshold chosen on the other folds, applied to it.

    With a single fold there is nothing to hold out; the threshold is then chosen and
    applied on the same pairs (the result is optimistic, and the report says so).
    """
    s, y, f = np.asarray(scores, np.float64), np.asarray(same, bool), np.asarray(folds)
    ids = sorted(set(f.tolist()))
    accs, thrs = [], []
    for k in ids:
        test = f == k
        train = ~test if len(ids) > 1 else test
        t, _ = best_threshold(s[train], y[train])
        accs.append(float(((s[test] >= t) == y[test]).mean()))
        thrs.append(t)
    return KFoldResult(accs, thrs)
