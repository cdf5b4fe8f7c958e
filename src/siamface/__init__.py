"""siamface: train, evaluate and ship Siamese / metric-learning face-verification models.

Data flows one way through the package:
images (``data``) -> faces (``faces``) -> tensors (``data.transforms``) -> embeddings
(``model``, ``embed``) -> scores -> decisions and metrics (``evaluate``, ``verify``).
"""

import os as _os

# OpenMP threads busy-wait between parallel regions by default. torch and the YuNet detector
# share one OpenMP runtime, and on a machine with other work to do the spinning made face
# detection 40x slower once torch was loaded (1.2 s instead of 0.027 s a photo at load 12 on 2
# cores; torch's own steps were also faster). Passive waiting must be chosen before torch is
# imported; a value the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from siamface.errors import SiamfaceError  # noqa: E402
from siamface.version import __version__  # noqa: E402

__all__ = ["SiamfaceError", "__version__", "load", "watch"]


def load(path, device: str = "auto", threshold: float | None = None):
    """Open a model for verification: ``siamface.load(path).verify(a, b)``.

    See :func:`siamface.api.load`; imported lazily so ``import siamface`` stays light.
    """
    from siamface.api import load as _load  # lazy: --help speed (PIL, numpy)

    return _load(path, device=device, threshold=threshold)


def watch(source, gallery, model=None, **options):
    """Watch a video file, folder of frames, webcam or stream; yield event dicts.

    See :func:`siamface.video.watch` (``siamface watch`` in Python); imported lazily.
    """
    from siamface.video import watch as _watch  # lazy: --help speed (PIL, numpy)

    return _watch(source, gallery, model, **options)
