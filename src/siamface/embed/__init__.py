"""Faces -> embeddings: one loaded model, whatever its format (siamface checkpoint, exported
ONNX, a carded third-party ONNX file, dlib, a fusion, flip averaging), and the pipeline that
embeds files and tensors.

:func:`create_embedder` (``siamface.embed.load``) is the one entry point to a model;
:func:`~siamface.embed.pipeline.embed_files` and
:func:`~siamface.embed.tensors.embed_tensors` are the one file pipeline and the one tensor
loop. Backends import lazily so that this package stays light (no torch, no onnxruntime until
a model is opened).
"""

from siamface.embed.load import create_embedder

__all__ = ["create_embedder"]
