"""Shipping a trained model: ONNX export (needs torch) and the ONNX runtime backend (does not).

``onnx_export`` turns a checkpoint into a self-describing ``.onnx`` file and proves it matches
PyTorch; ``onnx_runtime`` runs that file with onnxruntime behind the same :class:`Embedder`
interface as a checkpoint, so every command and the REST service accept either.
"""
