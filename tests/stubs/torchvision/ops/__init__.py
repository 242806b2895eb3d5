"""Test stand-in for ``torchvision.ops`` (see ``tests/stubs/torchvision/__init__.py``)."""
from .. import _missing

__getattr__ = _missing(__name__)
