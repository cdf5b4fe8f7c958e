"""Face detection and 5-point alignment: raw photos -> aligned face crops.

Models trained on aligned faces learn faces, not backgrounds; this layer turns a user's raw
photo (face off-centre, small, tilted, several people) into the crop such a model expects.
Importing this package is cheap: detector packages load only when a detector is first used.
"""

from siamface.faces.errors import AmbiguousFaceError, DetectorUnavailable, NoFaceError

__all__ = ["AmbiguousFaceError", "DetectorUnavailable", "NoFaceError"]
