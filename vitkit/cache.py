"""vitkit's cache folder: $VITKIT_CACHE_DIR, default ~/.cache/vitkit, one sub-folder per kind (features of
fine-tuning, label embeddings of zero-shot classification). Everything in it can be deleted to free the space.

Try it:  python -c "from vitkit.cache import cache_dir; print(cache_dir('text'))"
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    root = os.environ.get("VITKIT_CACHE_DIR") or Path.home() / ".cache" / "vitkit"
    return Path(root) / kind
