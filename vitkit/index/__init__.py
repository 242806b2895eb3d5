"""The image index: a LanceDB folder of image embeddings with their files, exact and ANN similarity search,
near-duplicates, and retrieval evaluation. See docs/index.md.

    from vitkit.index import ImageIndex, Hit, IndexMismatch, WeightsChanged, Place

Names are imported on first use, so that `vitkit.index.cli` (loaded by every `vitkit` command) stays light.

Try it:  python -m pytest tests/test_index.py -q
"""

from __future__ import annotations

import importlib

_WHERE = {"ImageIndex": "image_index", "IndexMismatch": "image_index", "WeightsChanged": "image_index",
          "Hit": "search", "Place": "roots", "DupPair": "dups",
          "AddReport": "ingest", "evaluate_retrieval": "retrieval", "retrieval_metrics": "retrieval"}
__all__ = tuple(sorted(_WHERE))


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'vitkit.index' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vitkit.index.{_WHERE[name]}"), name)
