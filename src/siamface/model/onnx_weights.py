"""Weights out of an ONNX file, as plain arrays: initialisers plus constant-folded subgraphs.

Some published ONNX models keep their weights block-quantised (int8 + per-block scales) and
dequantise them inside the graph (``DequantizeLinear`` -> ``Reshape`` -> ``Conv``). OpenCV Zoo's
SFace file is one: onnxruntime refuses it as shipped (its weights are also listed as graph
inputs) and OpenCV 5.x cannot run it. To *train* such a model we need its float weights, so the
weight-only part of the graph is evaluated once with the ``onnx`` package's reference
evaluator. That keeps the quantisation arithmetic (block sizes, axes, zero points) the one the
ONNX specification defines, instead of a re-implementation of it here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from siamface.errors import SiamfaceError

#: Ops that may appear in a weight-only subgraph (they only touch constants).
FOLDABLE_OPS = ("DequantizeLinear", "Reshape", "Cast", "Transpose", "Squeeze", "Unsqueeze")


def read_onnx_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Every constant tensor of ``path``: initialisers and outputs of foldable nodes whose
    inputs are all constants. Keys are the ONNX tensor names."""
    try:
        import onnx
        from onnx import helper, numpy_helper
        from onnx.reference import ReferenceEvaluator
    except ImportError as err:  # pragma: no cover - onnx is a core dependency
        raise SiamfaceError(f"reading ONNX weights needs the onnx package: {err}") from err
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as err:  # noqa: BLE001 - protobuf raises many types on a bad file
        raise SiamfaceError(f"cannot read ONNX file {path}: {err}") from err
    graph = model.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    known = set(consts)
    fold = []
    for node in graph.node:  # nodes are topologically sorted in a valid model
        if node.op_type in FOLDABLE_OPS and all(i in known for i in node.input if i):
            fold.append(node)
            known.update(node.output)
    if fold:
        outputs = [o for n in fold for o in n.output]
        sub = helper.make_graph(
            fold,
            "weights",
            [],
            [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outputs],
            initializer=list(graph.initializer),
        )
        sub_model = helper.make_model(sub, opset_imports=model.opset_import)
        sub_model.ir_version = model.ir_version
        try:
            values = ReferenceEvaluator(sub_model).run(None, {})
        except Exception as err:  # noqa: BLE001 - evaluator errors name the failing node
            raise SiamfaceError(f"cannot dequantise the weights of {path}: {err}") from err
        consts.update(zip(outputs, values, strict=True))
    return consts


def float_weight(consts: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The float value of weight ``name``: the initialiser itself, or what the graph computes
    from its quantised form (``<name>_reshaped`` / ``<name>_dequantized``)."""
    for key in (f"{name}_reshaped", f"{name}_dequantized", name):
        v = consts.get(key)
        if v is not None and np.issubdtype(v.dtype, np.floating):
            return v
    raise SiamfaceError(f"ONNX weights have no float tensor for {name!r}")
