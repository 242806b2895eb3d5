"""Class names: ImageNet-1k ships with vitkit (a 1000-class head without names gets them); other heads
without names are labelled class_0, class_1, ...

Try it:  python -c "from vitkit.labels import default_labels; print(default_labels(1000)[:3])"
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files


@lru_cache(maxsize=1)
def imagenet_1k() -> tuple[str, ...]:
    lines = files("vitkit.assets").joinpath("imagenet-1k-labels.txt").read_text().splitlines()
    return tuple(line.split("\t", 1)[1] for line in lines if line.strip())


def default_labels(num_classes: int) -> tuple[str, ...]:
    if num_classes == 1000:
        return imagenet_1k()
    return tuple(f"class_{i}" for i in range(num_classes))
