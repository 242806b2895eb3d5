"""Test stand-in for ``torchvision.transforms.functional``: only ``InterpolationMode``, whose
members timm uses as dict keys at import time (so it is a faithful copy of torchvision's enum)."""
from enum import Enum

from .. import _missing


class InterpolationMode(Enum):
    """Same members and values as ``torchvision.transforms.InterpolationMode``."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    # For PIL compatibility
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


__getattr__ = _missing(__name__)
