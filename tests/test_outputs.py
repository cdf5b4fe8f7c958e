"""Output paths that cannot be written (a folder where a file goes, a file where a folder goes,
a read-only folder, a full disk) are refused before the work, or fail cleanly: exit 2, one
line, the previous file intact, no temporary file left behind.

"Full disk" is tested for real: a 256 KiB tmpfs when the tests run as root (mounting needs
it), and everywhere with RLIMIT_FSIZE, which makes the kernel refuse writes past a size
(EFBIG) the way a full disk does (ENOSPC) - after the up-front check has passed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY_BACKBONE, needs_data

from siamface.cli.main import main
from siamface.errors import OutputError
from siamface.fileio import atomic_write, check_output_dir, check_output_file

pytestmark = needs_data
FAST = ["--workers", "0", "--no-progress"]
TRAIN_FAST = [f"backbone={TINY_BACKBONE}", "pretrained=none", "image_size=32", "epochs=1"]


def _mount(target: Path, options: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True
    )
    return r.returncode == 0


@pytest.fixture
def full_disk(tmp_path):
    """A real, full file system (a small tmpfs filled up), or a skip where none can be made."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if not _mount(mnt, "size=256k"):
        pytest.skip("a small tmpfs cannot be mounted here (needs root); see the fsize tests")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave: int = 0) -> None:
    """Fill ``mnt`` leaving about ``leave`` bytes free."""
    with open(mnt / "filler", "wb") as f:
        try:
            while True:
                free = shutil.disk_usage(mnt).free
                if free <= leave:
                    break
                f.write(b"\0" * min(65536, max(4096, free - leave)))
                f.flush()
        except OSError:
            pass


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may write to: a read-only tmpfs as root (root ignores permissions),
    else a chmod 555 folder."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        if not _mount(ro, "size=64k"):
            pytest.skip("running as root and cannot mount a read-only tmpfs")
        (ro / "old.txt").write_text("previous")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        try:
            yield ro
        finally:
            subprocess.run(["umount", "-l", str(ro)], check=False)
    else:
        (ro / "old.txt").write_text("previous")
        ro.chmod(0o555)
        try:
            yield ro
        finally:
            ro.chmod(0o755)


def _no_tmp(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _cmds(model, data, pairs_csv, out: Path, kind: str) -> dict[str, list]:
    """Each writing command with its output at ``out`` (``kind``: file or dir output)."""
    if kind == "dir":
        return {
            "train": ["train", "--data", data, "--out", out, "--no-progress", *TRAIN_FAST],
            "evaluate": ["evaluate", "--model", model, "--data", data, "--out", out, *FAST],
            "prepare": ["prepare", data, out, "--no-progress"],
        }
    return {
        "embed": ["embed", "--model", model, "--data", data, "--out", out, *FAST],
        "calibrate": ["calibrate", "--model", model, "--data", data, "--out", out, *FAST],
        "export": ["export", "--model", model, "--out", out],
        "pairs make": ["pairs", "make", data, "--folds", "2", "--per-fold", "3", "--out", out],
        "verify --out": ["verify", "--model", model, "--pairs-csv", pairs_csv, "--out", out],
        "import": ["import", "nothing.pth", "--out", out],
        "evaluate-1n": ["evaluate-1n", "--model", model, "--data", data, "--out", out],
    }


SUFFIX = {"embed": ".npz", "export": ".onnx", "import": ".safetensors", "calibrate": ".x"}


@pytest.fixture(scope="module")
def pairs_csv(pins_small, tmp_path_factory):
    ids = sorted(pins_small.iterdir())
    a, b = sorted(ids[0].iterdir())[:2]
    p = tmp_path_factory.mktemp("csv") / "pairs.csv"
    p.write_text(f"{a},{b}\n")
    return p


def _run(argv) -> tuple[int, str]:
    return main([str(x) for x in argv]), ""


def test_a_file_where_an_output_folder_goes(
    tiny_checkpoint, pins_small, pairs_csv, tmp_path, capsys
):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    for name, argv in _cmds(tiny_checkpoint, pins_small, pairs_csv, blocker, "dir").items():
        rc = main([str(x) for x in argv])
        err = capsys.readouterr().err
        assert rc == 2 and "is a file, not a folder" in err and "Traceback" not in err, name
        assert blocker.read_text() == "keep me", name


def test_a_folder_where_an_output_file_goes(
    tiny_checkpoint, pins_small, pairs_csv, tmp_path, capsys
):
    for name, argv in _cmds(tiny_checkpoint, pins_small, pairs_csv, tmp_path, "file").items():
        folder = tmp_path / f"{name.replace(' ', '_')}{SUFFIX.get(name, '')}"
        folder.mkdir()
        argv = [folder if x == tmp_path else x for x in argv]
        rc = main([str(x) for x in argv])
        err = capsys.readouterr().err
        assert rc == 2 and "is a folder" in err and "Traceback" not in err, (name, err)
        assert list(folder.iterdir()) == [], name


def test_a_file_where_a_parent_folder_goes(
    tiny_checkpoint, pins_small, pairs_csv, tmp_path, capsys
):
    blocker = tmp_path / "plain_file"
    blocker.write_text("x")
    for kind in ("file", "dir"):
        for name, argv in _cmds(
            tiny_checkpoint, pins_small, pairs_csv, blocker / "sub" / "out.onnx", kind
        ).items():
            rc = main([str(x) for x in argv])
            err = capsys.readouterr().err
            assert rc == 2 and "is a file, not a folder" in err, (name, err)


def test_read_only_folder_refused_before_work(
    read_only_dir, tiny_checkpoint, pins_small, pairs_csv, capsys
):
    for kind in ("file", "dir"):
        out = read_only_dir / ("new_out.onnx" if kind == "file" else "run")
        for name, argv in _cmds(tiny_checkpoint, pins_small, pairs_csv, out, kind).items():
            rc = main([str(x) for x in argv])
            err = capsys.readouterr().err
            assert rc == 2, (name, err)
            assert ("read-only" in err or "permission denied" in err) and str(out) in err, name
    assert sorted(p.name for p in read_only_dir.iterdir()) == ["old.txt"]


def test_full_disk_refused_before_work_previous_file_kept(
    full_disk, tiny_checkpoint, pins_small, pairs_csv, capsys
):
    previous = {}
    for name in ("embed", "export", "pairs make", "calibrate"):
        p = full_disk / f"{name.replace(' ', '_')}{SUFFIX.get(name, '.txt')}"
        p.write_bytes(b"previous " + name.encode())
        previous[name] = p
    (full_disk / "run").mkdir()
    _fill(full_disk)
    assert shutil.disk_usage(full_disk).free < 4096
    for kind in ("file", "dir"):
        cmds = _cmds(tiny_checkpoint, pins_small, pairs_csv, full_disk / "x", kind)
        for name, argv in cmds.items():
            out = previous.get(name, full_disk / ("run" if kind == "dir" else "new.out"))
            argv = [out if x == full_disk / "x" else x for x in argv]
            rc = main([str(x) for x in argv])
            err = capsys.readouterr().err
            assert rc == 2 and "the disk is full" in err and "Traceback" not in err, (name, err)
    for name, p in previous.items():
        assert p.read_bytes() == b"previous " + name.encode()
    assert _no_tmp(full_disk) == [] and list((full_disk / "run").iterdir()) == []


def test_disk_filling_up_during_the_write(full_disk, tiny_checkpoint, pins_small, capsys):
    """Room for the up-front check but not for the output: clean failure, old file kept."""
    ckpt, onnx = full_disk / "m.safetensors", full_disk / "m.onnx"
    ckpt.write_bytes(b"previous checkpoint")
    onnx.write_bytes(b"previous model")
    _fill(full_disk, leave=48 * 1024)  # the tiny model is ~0.5 MB in either format
    runs = {
        ckpt: ["calibrate", "--model", tiny_checkpoint, "--data", pins_small, "--out", ckpt, *FAST],
        onnx: ["export", "--model", tiny_checkpoint, "--out", onnx],
    }
    for out, argv in runs.items():
        rc = main([str(x) for x in argv])
        err = capsys.readouterr().err
        assert rc == 2 and f"cannot write {out}: the disk is full" in err, err
        assert len(err.strip().splitlines()) == 1
    assert ckpt.read_bytes() == b"previous checkpoint" and onnx.read_bytes() == b"previous model"
    assert _no_tmp(full_disk) == []


def test_prepare_on_a_disk_that_fills_stops_and_leaves_no_tmp(full_disk, tmp_path, capsys):
    from conftest import SHARED_DATA, copy_identities

    raw = copy_identities(SHARED_DATA / "celeba_wild", tmp_path / "raw", 2, 3)
    out = full_disk / "faces"
    _fill(full_disk, leave=24 * 1024)  # the marker fits; a few 112 px PNG crops do not
    rc = main(["prepare", str(raw), str(out), "--no-progress", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "the disk is full" in err and "Traceback" not in err, err
    assert _no_tmp(full_disk) == []


def _limited(argv: list[str], limit: int, cwd: Path) -> subprocess.CompletedProcess:
    """Run siamface with RLIMIT_FSIZE: writes past ``limit`` bytes fail with EFBIG."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "from siamface.cli.main import main\n"
        f"sys.exit(main({[str(a) for a in argv]!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_write_failing_past_a_size_limit_keeps_previous_file(pins_small, tmp_path):
    out = tmp_path / "pairs.txt"
    out.write_bytes(b"previous pairs")
    argv = ["pairs", "make", pins_small, "--folds", "2", "--per-fold", "20", "--out", out]
    r = _limited(argv, 1024, tmp_path)  # the file is ~2.5 KB
    assert r.returncode == 2, r.stderr
    assert f"cannot write {out}" in r.stderr and "file size limit" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == b"previous pairs" and _no_tmp(tmp_path) == []


def test_prepare_past_a_size_limit_leaves_no_tmp_files(tmp_path):
    from conftest import SHARED_DATA, copy_identities

    raw = copy_identities(SHARED_DATA / "celeba_wild", tmp_path / "raw", 2, 2)
    out = tmp_path / "faces"
    r = _limited(["prepare", raw, out, "--no-progress", "--workers", "1"], 8 * 1024, tmp_path)
    assert r.returncode == 2 and "file size limit" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert _no_tmp(out) == []


def test_fileio_checks_and_atomic_write(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("old")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_dir(f)
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path)
    assert check_output_file(tmp_path / "new" / "x.json") == tmp_path / "new" / "x.json"
    assert not (tmp_path / "new").exists()  # the check creates nothing

    def boom(p: Path) -> None:
        p.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(f, boom)
    assert f.read_text() == "old" and _no_tmp(tmp_path) == []
    with pytest.raises(OutputError, match="is a folder"):
        atomic_write(tmp_path, lambda p: p.write_text("x"))
    err = OutputError("x")
    assert isinstance(err, OSError)  # callers that catch OSError keep working
