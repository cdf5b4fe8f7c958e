"""siamface: train, evaluate and ship Siamese / metric-learning face-verification models.

Data flows one way through the package:
images (``data``) -> faces (``faces``) -> tensors (``data.transforms``) -> embeddings
(``model``, ``embed``) -> scores -> decisions and metrics (``evaluate``, ``verify``).
"""

from siamface.errors import SiamfaceError
from siamface.version import __version__

__all__ = ["SiamfaceError", "__version__", "load"]


def load(path, device: str = "auto", threshold: float | None = None):
    """Open a model for verification: ``siamface.load(path).verify(a, b)``.

    See :func:`siamface.api.load`; imported lazily so ``import siamface`` stays light.
    """
    from siamface.api import load as _load

    return _load(path, device=device, threshold=threshold)
