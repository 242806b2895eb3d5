"""Data files vitkit ships: label lists, CLIP's prompt templates, and the models that work offline.

SHIPPED names the models in this folder: `vitkit classify x.png --model vitkit-digits` (or `vitkit.load(...)`) loads
them from the package, without a network or a cache; `vitkit models` lists them.
"""

from __future__ import annotations

from pathlib import Path

# name -> (folder in this package, what it is)
SHIPPED = {"vitkit-digits": ("digits-vit", "0.2M-parameter ViT trained by vitkit on scikit-learn's digits "
                                           "(32 px, labels 0-9, 99.2% on its test split); the demo's model")}


def shipped_path(name: str) -> Path:
    return Path(__file__).resolve().parent / SHIPPED[name][0]
