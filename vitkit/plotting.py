"""matplotlib, headless, or None with a note when it is not installed (it is the optional "train" extra):
pictures are skipped, numbers never are.

Try it:  python -c "from vitkit.plotting import pyplot; print(pyplot())"
"""

from __future__ import annotations

import sys


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('note: no PNG written (matplotlib missing: pip install "vitkit[train]")', file=sys.stderr)
        return None
    return plt
