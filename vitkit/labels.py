"""Class names: ImageNet-1k ships with vitkit (a 1000-class head without names gets them); other heads
without names are labelled class_0, class_1, ...

Try it:  python -c "from vitkit.labels import default_labels; print(default_labels(1000)[:3])"
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files


@lru_cache(maxsize=1)
def _imagenet_1k_rows() -> tuple[tuple[str, str], ...]:
    lines = files("vitkit.assets").joinpath("imagenet-1k-labels.txt").read_text().splitlines()
    return tuple(tuple(line.split("\t", 1)) for line in lines if line.strip())


def imagenet_1k() -> tuple[str, ...]:
    """The 1000 short class names in the standard index order (two names repeat: crane, maillot)."""
    return tuple(name for _, name in _imagenet_1k_rows())


def imagenet_1k_wnids() -> tuple[str, ...]:
    """The 1000 WordNet ids (n01440764 ...) in the standard index order: the class identity."""
    return tuple(wnid for wnid, _ in _imagenet_1k_rows())


@lru_cache(maxsize=1)
def imagenet_1k_clip_names() -> tuple[str, ...]:
    """The 1000 class names OpenAI curated for CLIP's zero-shot ImageNet evaluation ("great white shark",
    "hammerhead shark", ...: clearer prompts than the WordNet short names), in the standard index order; the list
    published with CLIP's prompt-engineering notebook (MIT), as open_clip ships it."""
    lines = files("vitkit.assets").joinpath("imagenet-1k-clip-names.txt").read_text(encoding="utf-8").splitlines()
    return tuple(line for line in lines if line.strip())


def default_labels(num_classes: int) -> tuple[str, ...]:
    if num_classes == 1000:
        return imagenet_1k()
    return tuple(f"class_{i}" for i in range(num_classes))
