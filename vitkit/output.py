"""Result rows -> table, JSONL or CSV, written to a stream as they come.

Try it:  python -m pytest tests/test_cli.py -q
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable

FORMATS = ("table", "jsonl", "csv")
_SURROGATE = re.compile("[\ud800-\udfff]")


def json_text(obj) -> str:
    """JSON with non-ASCII text as it is, except lone surrogates (the bytes of a file name that is not UTF-8,
    as Python holds them) written as \\udcXX escapes: valid UTF-8 JSON that json.loads turns back into the
    same name."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, ensure_ascii=False))


def _table_line(row: dict) -> str:
    if row["error"]:
        return f"{row['path']}\tERROR: {row['error']}"
    return row["path"] + "\t" + ", ".join(f"{p['label']} ({p['score']:.3f})" for p in row["top_k"])


def write_rows(rows: Iterable[dict], fmt: str, out: io.TextIOBase, top_k: int) -> tuple[int, int]:
    """Writes each row as it comes; returns (rows, errors)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose {', '.join(FORMATS)}")
    writer = None
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(["path"] + [f"top{r}_{f}" for r in range(1, top_k + 1) for f in ("index", "label", "score")]
                        + ["error"])
    count = errors = 0
    for row in rows:
        count += 1
        errors += row["error"] is not None
        if fmt == "jsonl":
            out.write(json_text(row) + "\n")
        elif fmt == "csv":
            cells = [c for p in row["top_k"] for c in (p["index"], p["label"], f"{p['score']:.6f}")]
            cells += [""] * (3 * top_k - len(cells))
            writer.writerow([row["path"], *cells, row["error"] or ""])
        else:
            out.write(_table_line(row) + "\n")
        out.flush()
    return count, errors
