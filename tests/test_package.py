"""Code in one place: the version, the layering (lower layers never import the package root,
evaluate/ and the torch-free inference path never pull torch)."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys

from conftest import REPO

import siamface
import siamface.version


def test_version_has_one_source():
    assert siamface.__version__ == siamface.version.__version__
    assert importlib.metadata.version("siamface") == siamface.version.__version__
    text = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and "siamface.version.__version__" in text


def test_no_module_imports_the_package_root():
    offenders = []
    for path in (REPO / "src" / "siamface").rglob("*.py"):
        if path.name == "__init__.py" and path.parent.name == "siamface":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "siamface" and node.level == 0:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_evaluate_and_onnx_inference_stay_torch_free(tmp_path):
    """Writing reports and pairs files must not pull torch and timm (as importing
    atomic_write through model/checkpoint.py did)."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import siamface.scores.evaluate, siamface.embed.onnx_backend\n"
        "from siamface.scores.report import write_report\n"
        "from siamface.scores.protocol import PairsFile, write_pairs\n"
        f"write_report(Path({str(tmp_path)!r}), {{'ok': 1}})\n"
        f"write_pairs(PairsFile(1, 1), Path({str(tmp_path)!r}) / 'pairs.txt')\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
