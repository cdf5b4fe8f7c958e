"""Shipping a trained model: ONNX export (needs torch).

``onnx_export`` turns a checkpoint into a self-describing ``.onnx`` file and proves it matches
PyTorch. Running such a file is inference, not export: ``siamface.embed.onnx_backend``
does it with onnxruntime behind the same ``Embedder`` interface as a checkpoint, so every
command and the REST service accept either.
"""
