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
    model = _load(path)
    consts, _ = _fold_constants(model, Path(path))
    return consts


def _load(path: str | Path):
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - onnx is a core dependency
        raise SiamfaceError(f"reading ONNX files needs the onnx package: {err}") from err
    try:
        return onnx.load(str(path))
    except Exception as err:  # noqa: BLE001 - protobuf raises many types on a bad file
        raise SiamfaceError(f"cannot read ONNX file {path}: {err}") from err


def _fold_constants(model, path: Path) -> tuple[dict[str, np.ndarray], list]:
    """(every constant tensor by name, the nodes that only compute constants)."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

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
    return consts, fold


def float_weight(consts: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The float value of weight ``name``: the initialiser itself, or what the graph computes
    from its quantised form (``<name>_reshaped`` / ``<name>_dequantized``)."""
    for key in (f"{name}_reshaped", f"{name}_dequantized", name):
        v = consts.get(key)
        if v is not None and np.issubdtype(v.dtype, np.floating):
            return v
    raise SiamfaceError(f"ONNX weights have no float tensor for {name!r}")


def runnable_graph(path: str | Path) -> tuple[bytes, dict]:
    """``path`` as a model onnxruntime runs on batches, at full speed: weight-only subgraphs
    (block-quantised weights dequantised in the graph) are folded into float constants,
    graph inputs that are weights or that nothing reads are dropped, and a batch dimension
    fixed to 1 is made symbolic.

    OpenCV Zoo exports list every weight as a graph *input* too (so that OpenCV can feed
    them) and fix the batch to 1; onnxruntime then skips constant folding, needs every
    "input" fed, and some versions refuse the file. Returns the serialised model and what was
    changed (``{"folded_nodes": n, "dropped_inputs": n, "batch": "symbolic"}``).
    """
    from onnx import numpy_helper

    path = Path(path)
    model = _load(path)
    graph = model.graph
    consts, fold = _fold_constants(model, path)
    folded = {id(n) for n in fold}
    keep_nodes = [n for n in graph.node if id(n) not in folded]
    used = {i for n in keep_nodes for i in n.input} | {o.name for o in graph.output}
    new_inits = [
        numpy_helper.from_array(np.asarray(consts[name]), name)
        for name in sorted(used & set(consts))
    ]
    del graph.node[:]
    graph.node.extend(keep_nodes)
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    const_names = set(consts)
    real = [i for i in graph.input if i.name not in const_names and i.name in used]
    changes: dict = {
        "folded_nodes": len(fold),
        "dropped_inputs": len(graph.input) - len(real),
    }
    del graph.input[:]
    graph.input.extend(real)
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_param = "N"  # setting dim_param clears dim_value (a oneof)
            changes["batch"] = "symbolic"
    del graph.value_info[:]  # intermediate shapes may carry the old batch of 1
    return model.SerializeToString(), changes
