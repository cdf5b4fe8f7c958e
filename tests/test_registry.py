"""The shared choose-by-name registry: lazy entries, scoped changes, and the families that use
it (face detectors, gallery backends, index kinds, embedder backends)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from siamface.errors import ConfigError, SiamfaceError
from siamface.registry import Registry


def _fresh_python(code: str) -> str:
    """Run ``code`` in a new interpreter (a clean ``sys.modules``) and return its stdout."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout.strip()


def test_a_lazy_entry_imports_its_module_only_when_built():
    out = _fresh_python(
        """
        import sys
        from siamface.registry import Registry
        r = Registry("codec")
        r.register_lazy("csv", "csv:DictReader", help="comma separated")
        before = "csv" in sys.modules
        names, lazy = r.names(), r.get("csv").lazy
        builder = r.get("csv").builder
        print(before, names, lazy, builder.__name__, "csv" in sys.modules)
        """
    )
    assert out == "False ('csv',) True DictReader True"


def test_lazy_target_must_name_module_and_attribute_and_names_are_unique():
    r: Registry = Registry("codec")
    with pytest.raises(ValueError, match="module:attribute"):
        r.register_lazy("csv", "csv.DictReader")
    r.register_lazy("csv", "csv:DictReader")
    with pytest.raises(ValueError, match="already registered"):
        r.register_lazy("csv", "csv:reader")
    with pytest.raises(ConfigError, match="did you mean 'csv'"):
        r.get("cvs")


def test_scoped_changes_are_undone_and_keep_the_order():
    r: Registry = Registry("colour")
    for name in ("red", "green", "blue"):
        r.register(name)(lambda name=name: name)
    with r.scoped():
        r.replace("green", lambda: "lime")
        r.register("cyan")(lambda: "cyan")
        r.unregister("red")
        assert r.names() == ("green", "blue", "cyan") and r.build("green") == "lime"
    assert r.names() == ("red", "green", "blue") and r.build("green") == "green"


def test_optional_backends_are_not_imported_to_list_or_choose_others():
    """Listing gallery backends and index kinds, and opening the built-in ones, imports
    neither the Milvus backend nor the index kinds module until one is chosen."""
    out = _fresh_python(
        """
        import sys
        from siamface.gallery.backends import BACKENDS, backend_class
        from siamface.gallery.index import INDEX_KINDS, make_index
        from siamface.embed.load import EMBEDDER_BACKENDS
        listed = (BACKENDS.names(), INDEX_KINDS.names(), EMBEDDER_BACKENDS.names())
        quiet = [m for m in ("siamface.gallery.milvus", "siamface.gallery.index_kinds",
                             "siamface.embed.dlib_backend", "siamface.embed.onnx_backend")
                 if m in sys.modules]
        backend_class("builtin")
        make_index("flat", 4)
        print(listed, quiet, "siamface.gallery.milvus" in sys.modules,
              "siamface.gallery.index_kinds" in sys.modules)
        """
    )
    assert out == (
        "(('builtin', 'milvus'), ('flat', 'pqfs', 'ivfpqfs', 'hnsw', 'usearch'), "
        "('torch', 'onnx', 'dlib')) [] False True"
    )


def test_unknown_names_list_the_registered_choices():
    from siamface.gallery.backends import backend_class
    from siamface.gallery.index import make_index

    with pytest.raises(SiamfaceError, match="unknown gallery backend 'redis'; choose from builtin"):
        backend_class("redis")
    with pytest.raises(SiamfaceError, match="unknown index kind 'annoy'; choose from flat, pqfs"):
        make_index("annoy", 8)


def test_detector_choices_in_help_come_from_the_registry(capsys):
    from siamface.cli.main import main
    from siamface.faces.detect import DETECTORS, detector_names

    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "{" + ",".join(detector_names()) + "}" in help_text
    assert set(detector_names()) == set(DETECTORS.names())


def test_create_embedder_picks_the_backend_by_name_and_says_what_is_missing(tmp_path):
    from siamface.embed import create_embedder
    from siamface.embed.load import EMBEDDER_BACKENDS, backend_for

    weights = tmp_path / "m.safetensors"
    weights.write_bytes(b"")
    assert backend_for(str(weights)) == "torch" and backend_for("dlib") == "dlib"
    with pytest.raises(SiamfaceError, match=r"model not found: .*built-in models: dlib, sface"):
        create_embedder(tmp_path / "missing.onnx")
    with pytest.raises(ConfigError, match="embedder backend must be one of torch, onnx, dlib"):
        create_embedder(weights, backend="tflite")
    with pytest.raises(SiamfaceError, match="backend='onnx' applies to one model file"):
        create_embedder("sface+dlib", backend="onnx")
    with EMBEDDER_BACKENDS.scoped():
        facts = EMBEDDER_BACKENDS.get("torch").facts
        EMBEDDER_BACKENDS.replace("torch", "siamface_no_such_runtime:Embedder", **facts)
        with pytest.raises(
            SiamfaceError, match=r"cannot run .*m.safetensors: PyTorch support is missing .*torch"
        ):
            create_embedder(weights)
    assert EMBEDDER_BACKENDS.get("torch").target == "siamface.embed.torch_backend:TorchEmbedder"
