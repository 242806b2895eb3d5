"""`vitkit classify --format table`: a header, then one aligned row per input, each printed as it arrives (a run
of any length is never held). The column widths are fixed before the first row, from the output's width (the
terminal's, or 100 columns for a pipe or a file) and, when they are known, the longest input path and label: a
path that does not fit keeps its end ("…/photos/cat.jpg"), a label its start; a narrow output shows as many of
the top-k predictions as fit (tsv and jsonl carry them all). An input that failed shows its error in its row.
Colour only on a terminal, and none under NO_COLOR.

    path                                    top-1 score  top-2 score  top-3 score
    demo-out/digits/broken.jpg              ERROR: not an image: cannot identify image file
    demo-out/digits/digit_0.png             0     0.916  6     0.015  5     0.011

Try it:  python examples/demo.py        (its first step prints this table)
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from rich.cells import cell_len, get_character_cell_size
from rich.console import Console
from rich.text import Text

PIPE_WIDTH = 100  # columns when the rows go to a pipe or a file
SCORE_WIDTH = 5  # "0.873"
GAP = "  "  # before each prediction (a label and its score are one space apart)
MIN_PATH_WIDTH = 12
PATH_SHARE = 0.4  # of the room beside the scores, the least the path column gets when paths and labels are long
STYLE = {"header": "bold", "top1": "bold", "score": "cyan", "error": "red"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MARK = "\ue000"  # a private-use character: where a style's codes end and its reset begins


def printable(text: str) -> str:
    """`text` with its control characters (a newline or an escape code in a file name) written as \\xNN."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


def fit(text: str, width: int, keep_end: bool = False) -> str:
    """`text` in exactly `width` terminal cells: padded with spaces, or cut with an ellipsis that replaces its
    end (its start when keep_end)."""
    cells = cell_len(text)
    if cells <= width:
        return text + " " * (width - cells)
    if cells == len(text):  # one cell per character
        return "…" + text[len(text) - width + 1:] if keep_end else text[:width - 1] + "…"
    kept, used = [], 1  # the ellipsis takes one cell
    for char in reversed(text) if keep_end else text:
        size = get_character_cell_size(char)
        if used + size > width:
            break
        kept.append(char)
        used += size
    cut = "…" + "".join(reversed(kept)) if keep_end else "".join(kept) + "…"
    return cut + " " * (width - used)


@dataclass(frozen=True)
class Columns:
    """The widths of the path column and of every label column, for `top_k` predictions in `width` cells."""

    width: int
    path: int
    label: int
    top_k: int

    @classmethod
    def for_width(cls, width: int, top_k: int, paths: Sequence[str] | None = None,
                  labels: Sequence[str] | None = None) -> Columns:
        """As many of the `top_k` predictions as fit beside the narrowest path column; then paths and labels (when
        known) get what their longest needs when it fits, else the path column gets at least PATH_SHARE of the
        room and the labels share the rest."""
        least_label = len(f"top-{top_k}")
        top_k = max(1, min(top_k, (width - MIN_PATH_WIDTH) // (len(GAP) + least_label + 1 + SCORE_WIDTH)))
        room = width - top_k * (len(GAP) + 1 + SCORE_WIDTH)
        path_needs = max(map(cell_len, map(printable, paths)), default=0) if paths else room
        label_needs = max(least_label, *map(cell_len, map(printable, labels))) if labels else room
        path = max(MIN_PATH_WIDTH, len("path"),
                   min(path_needs, max(room - top_k * label_needs, int(room * PATH_SHARE))))
        return cls(width, path, max(least_label, min(label_needs, (room - path) // top_k)), top_k)

    @property
    def error(self) -> int:
        """The width of an error, which takes the place of the predictions up to the end of the line."""
        predictions = self.top_k * (len(GAP) + self.label + 1 + SCORE_WIDTH)
        return max(self.width, self.path + predictions) - self.path - len(GAP)


class Table:
    """Writes the header now and each row when given it, to `out`."""

    def __init__(self, out: TextIO, top_k: int, paths: Sequence[str] | None = None,
                 labels: Sequence[str] | None = None):
        plain = bool(os.environ.get("NO_COLOR"))
        console = Console(file=out, color_system=None if plain else "auto")
        width = console.width if console.is_terminal else PIPE_WIDTH
        self.out = out
        self.columns = Columns.for_width(width, min(top_k, len(labels)) if labels else top_k, paths, labels)
        self.codes = {name: _codes(console, style) for name, style in STYLE.items()}
        self._write(self._header())

    def write_row(self, row: dict) -> None:
        """One input's row: {"path", "top_k": [{"label", "score"}, ...], "error"} (as vitkit.tasks.classify's)."""
        columns, paint = self.columns, self._paint
        cells = [fit(printable(row["path"]), columns.path, keep_end=True)]
        if row["error"]:
            cells.append(GAP + paint(fit(printable(f"ERROR: {row['error']}"), columns.error), "error"))
        for rank, prediction in enumerate([] if row["error"] else row["top_k"][:columns.top_k]):
            label = fit(printable(prediction["label"]), columns.label)
            cells.append(GAP + (paint(label, "top1") if rank == 0 else label) + " "
                         + paint(f"{prediction['score']:.3f}".rjust(SCORE_WIDTH), "score"))
        self._write("".join(cells))

    def _header(self) -> str:
        cells = [fit("path", self.columns.path)]
        cells += [GAP + fit(f"top-{rank}", self.columns.label) + " " + "score".rjust(SCORE_WIDTH)
                  for rank in range(1, self.columns.top_k + 1)]
        return self._paint("".join(cells), "header")

    def _paint(self, cell: str, style: str) -> str:
        """`cell` in `style` (its trailing padding left plain)."""
        before, after = self.codes[style]
        text = cell.rstrip(" ")
        return before + text + after + cell[len(text):] if before else cell

    def _write(self, line: str) -> None:
        self.out.write(line.rstrip(" ") + "\n")


def _codes(console: Console, style: str) -> tuple[str, str]:
    """The escape codes that start and end `style` on `console` (none where it shows no colour)."""
    with console.capture() as captured:
        console.print(Text(_MARK, style), end="")
    before, _, after = captured.get().partition(_MARK)
    return before, after
