"""Test stand-in for ``torchvision.transforms``: timm.data.transforms subclasses ``ToTensor`` at
import time (``MaybeToTensor``); image transforms are never run through timm in our tests."""
from .. import _missing, _placeholder
from . import functional  # noqa: F401  (real torchvision exposes it as an attribute too)

ToTensor = _placeholder("transforms.ToTensor")

__getattr__ = _missing(__name__)
