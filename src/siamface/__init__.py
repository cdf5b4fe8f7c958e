"""siamface: train, evaluate and ship Siamese / metric-learning face-verification models.

Data flows one way through the package:
images (``data``) -> faces (``faces``) -> tensors (``data.transforms``) -> embeddings
(``model``, ``embed``) -> scores -> decisions and metrics (``evaluate``, ``verify``).
"""

from siamface.errors import SiamfaceError

__version__ = "0.1.0"
__all__ = ["SiamfaceError", "__version__"]
