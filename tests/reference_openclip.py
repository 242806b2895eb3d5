"""TEST-ONLY access to OpenCLIP's image tower (`open_clip.transformer.VisionTransformer`), the reference for
vitkit's OpenCLIP layout. open_clip_torch is installed without its dependencies (`make test` does it, like timm):
its package __init__ imports the tokenizers and torchvision transforms, so only its transformer module is
imported, inside a bare package, through the torchvision stand-in of tests/stubs.

Run:  .venv/bin/python -m pytest tests/test_parity_families.py -q -k openclip
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

from reference_timm import torchvision_standin


def bare_openclip() -> types.ModuleType:
    """The `open_clip` package with its files but without running its __init__ (which imports torchvision), in
    sys.modules with its real spec (so importlib.util.find_spec("open_clip") keeps working); ImportError (with the
    reason) when open_clip_torch is not installed."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise ImportError("open_clip_torch is not installed (pip install --no-deps open_clip_torch)")
    package = types.ModuleType("open_clip")
    package.__path__ = [str(Path(spec.origin).parent)]
    package.__spec__, package.__file__ = spec, spec.origin
    sys.modules["open_clip"] = package
    return package


def import_openclip_transformer() -> types.ModuleType:
    """open_clip.transformer; ImportError (with the reason) when open_clip_torch is not installed."""
    if "open_clip.transformer" in sys.modules:
        return sys.modules["open_clip.transformer"]
    bare_openclip()
    with torchvision_standin():
        return importlib.import_module("open_clip.transformer")
