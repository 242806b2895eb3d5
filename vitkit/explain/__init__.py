"""Attention maps and attention rollout as arrays and pictures: `explain(model, images)` (explanation.py),
the maps themselves (maps.py), overlay PNGs (overlay.py), contact sheets (sheet.py), many files at once
(files.py), `vitkit explain` (cli.py).

Try it:  vitkit explain ../shared/images/imagenet-sample-100/n01440764_tench.JPEG --arch deit_tiny_patch16_224 \
           --model ../shared/weights/deit-tiny-patch16-224/model.safetensors --out explained/
"""

from vitkit.explain.explanation import Explanation, Failed, explain, explain_pixels, seen_image
from vitkit.explain.maps import HEAD_FUSIONS, METHODS, READOUTS, MapSpec, patch_map, rollout

__all__ = ["HEAD_FUSIONS", "METHODS", "READOUTS", "Explanation", "Failed", "MapSpec", "explain", "explain_pixels",
           "patch_map", "rollout", "seen_image"]
