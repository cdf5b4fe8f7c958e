"""Exit codes: every error is 2 with one line (never 1, which verify uses for "different
people"), unexpected exceptions included; --debug shows the traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, needs_data

import siamface.cli.verify as verify_cli
from siamface.cli.main import main


def test_unexpected_exception_exits_2_with_one_line_and_a_traceback_file(
    monkeypatch, tmp_path, capsys
):
    def broken(args):
        return {}["a key nobody set"]  # a genuine bug, as a user would hit one

    monkeypatch.setattr(verify_cli, "_run_one", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("SIAMFACE_DEBUG", raising=False)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    rc = main(["verify", "--model", "m.safetensors", "a.jpg", "b.jpg"])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "unexpected KeyError" in err
    saved = Path(re.search(r"traceback in (\S+?);", err).group(1))
    assert saved.parent == tmp_path and "Traceback" in saved.read_text()
    assert "a key nobody set" in saved.read_text()

    rc = main(["--debug", "verify", "--model", "m.safetensors", "a.jpg", "b.jpg"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback (most recent call last)" in err and "broken" in err


def test_out_of_memory_and_os_errors_are_one_line(monkeypatch, capsys):
    def oom(args):
        raise MemoryError

    def eio(args):
        raise OSError(5, "Input/output error", "/mnt/flaky/a.jpg")

    for fn, words in ((oom, "out of memory"), (eio, "Input/output error (/mnt/flaky/a.jpg)")):
        monkeypatch.setattr(verify_cli, "_run_one", fn)
        assert main(["verify", "--model", "m", "a", "b"]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1


@needs_data
@pytest.mark.parametrize("value", ["nan", "5", "-1.01", "inf", "abc"])
def test_verify_threshold_must_be_a_cosine(value, tiny_checkpoint, pins_small, capsys):
    a, b = sorted(sorted(pins_small.iterdir())[0].iterdir())[:2]
    argv = ["verify", "--model", str(tiny_checkpoint), str(a), str(b), "--threshold", value]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "--threshold" in capsys.readouterr().err


@needs_data
def test_identify_threshold_and_partial_failure_exit_2(
    tiny_checkpoint, pins_small, tmp_path, capsys
):
    g = tmp_path / "g"
    assert (
        main(["gallery", "enroll", str(g), str(pins_small), "--model", str(tiny_checkpoint)]) == 0
    )
    with pytest.raises(SystemExit) as info:
        main(["identify", str(g), "x.jpg", "--threshold", "nan"])
    assert info.value.code == 2
    good = sorted(sorted(pins_small.iterdir())[0].iterdir())[0]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    capsys.readouterr()
    assert main(["identify", str(g), str(good), str(bad)]) == 2  # never 1
    out = capsys.readouterr()
    assert str(good) in out.out and "bad.jpg: error" in out.err


def test_console_script_exit_status_and_no_traceback(tmp_path):
    """The installed entry point, in a fresh process: an error is 2, one line."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run(
        [sys.executable, "-m", "siamface.cli.main", "verify", "--model", str(tmp_path / "no"),
         "a.jpg", "b.jpg"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "not found" in r.stderr
