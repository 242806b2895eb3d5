"""Attention maps and attention rollout as arrays and pictures: `explain(model, images)` (explanation.py),
the maps themselves (maps.py), overlay PNGs (overlay.py), contact sheets (sheet.py), many files at once
(files.py), `vitkit explain` (cli.py).

Try it:  vitkit explain ../shared/images/imagenet-sample-100/n01440764_tench.JPEG --arch deit_tiny_patch16_224 \
           --model ../shared/weights/deit-tiny-patch16-224/model.safetensors --out explained/
"""

import importlib

_WHERE = {"Explanation": "explanation", "Failed": "explanation", "explain": "explanation",
          "explain_pixels": "explanation", "seen_image": "explanation", "MapSpec": "maps", "patch_map": "maps",
          "rollout": "maps", "render": "overlay", "HEAD_FUSIONS": "options", "METHODS": "options", "READOUTS": "options"}
__all__ = tuple(sorted(_WHERE))


def __getattr__(name: str):
    """Names imported on first use, so that `vitkit.explain.cli` (loaded by every `vitkit` command) stays light."""
    if name not in _WHERE:
        raise AttributeError(f"module 'vitkit.explain' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vitkit.explain.{_WHERE[name]}"), name)
