"""Faces -> embeddings: one loaded model, whatever its format (siamface checkpoint, exported
ONNX, a carded third-party ONNX file, dlib, a fusion, flip averaging), and the batch pipeline
that embeds files and tensors.

``siamface.embed.load.open_model`` is the entry point; backends import lazily so that this
package stays light (no torch, no onnxruntime until a model is opened).
"""
