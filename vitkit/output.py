"""Result rows -> an aligned table (vitkit.table), TSV, JSONL or CSV, written to a stream as they come.

Try it:  python -m pytest tests/test_output.py -q
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Sequence

FORMATS = ("table", "tsv", "jsonl", "csv")
_SURROGATE = re.compile("[\ud800-\udfff]")


def json_text(obj) -> str:
    """JSON with non-ASCII text as it is, except lone surrogates (the bytes of a file name that is not UTF-8,
    as Python holds them) written as \\udcXX escapes: valid UTF-8 JSON that json.loads turns back into the
    same name."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, ensure_ascii=False))


def _tsv_line(row: dict) -> str:
    """path<TAB>label (score), label (score), ... or path<TAB>ERROR: reason."""
    if row["error"]:
        return f"{row['path']}\tERROR: {row['error']}"
    return row["path"] + "\t" + ", ".join(f"{p['label']} ({p['score']:.3f})" for p in row["top_k"])


def write_rows(rows: Iterable[dict], fmt: str, out: io.TextIOBase, top_k: int, paths: Sequence[str] | None = None,
               labels: Sequence[str] | None = None) -> tuple[int, int]:
    """Writes each row as it comes (above any progress bar on the same terminal); returns (rows, errors). The
    table sizes its columns to `paths` and `labels` when they are given (all the inputs, the model's labels)."""
    from vitkit.progress import above_bars

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose {', '.join(FORMATS)}")
    write = _row_writer(fmt, out, top_k, paths, labels)
    count = errors = 0
    for row in rows:
        count += 1
        errors += row["error"] is not None
        with above_bars(out):
            write(row)
            out.flush()
    return count, errors


def _row_writer(fmt: str, out: io.TextIOBase, top_k: int, paths: Sequence[str] | None,
                labels: Sequence[str] | None) -> Callable[[dict], None]:
    """A function that writes one row in `fmt` (after writing the format's header, if it has one)."""
    if fmt == "jsonl":
        return lambda row: out.write(json_text(row) + "\n")
    if fmt == "tsv":
        return lambda row: out.write(_tsv_line(row) + "\n")
    if fmt == "table":
        from vitkit.table import Table

        return Table(out, top_k, paths, labels).write_row
    writer = csv.writer(out)
    writer.writerow(["path"] + [f"top{r}_{f}" for r in range(1, top_k + 1) for f in ("index", "label", "score")]
                    + ["error"])

    def csv_row(row: dict) -> None:
        cells = [c for p in row["top_k"] for c in (p["index"], p["label"], f"{p['score']:.6f}")]
        cells += [""] * (3 * top_k - len(cells))
        writer.writerow([row["path"], *cells, row["error"] or ""])

    return csv_row
