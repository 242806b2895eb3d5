"""What the commands print: `vitkit classify`'s aligned table (a header, fixed columns, errors in their row,
colour only on a terminal), its tsv / jsonl / csv formats on stdout and in --output files, and progress that goes
to stderr, never to stdout (bench, export onnx, eval), on the shipped digits model.

Run:  .venv/bin/python -m pytest tests/test_output.py -q
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pty
import re
import subprocess
import sys
import time

import pytest
from PIL import Image
from rich.cells import cell_len

from vitkit import cli, progress
from vitkit.output import FORMATS, write_rows
from vitkit.table import PIPE_WIDTH

DIGITS = "vitkit-digits"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as a console's stdout or stderr does."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal_env(monkeypatch):
    """A colour terminal 100 columns wide, whatever the environment running the tests says."""
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", str(PIPE_WIDTH))


@pytest.fixture
def images(tmp_path):
    """Three small images and one broken file, in a folder."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (80 * i, 255 - 80 * i, 40)).save(folder / f"digit_{i}.png")
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    return folder


def _rows() -> list[dict]:
    deep = "/".join(["a-folder-with-a-long-name"] * 6) + "/deep.jpg"
    return [
        {"path": "photos/cat.jpg", "top_k": [{"index": 0, "label": "cat", "score": 0.91},
                                             {"index": 1, "label": "dog", "score": 0.05}], "error": None},
        {"path": deep, "top_k": [{"index": 2, "label": "猫猫", "score": 1.0},
                                 {"index": 3, "label": "averyveryverylonglabelindeed", "score": 0.0}], "error": None},
        {"path": "photos/broken.jpg", "top_k": [], "error": "not an image: cannot identify image file"},
    ]


def _table(rows: list[dict], out: io.StringIO, **hints) -> list[str]:
    write_rows(iter(rows), "table", out, 2, **hints)
    return out.getvalue().splitlines()


def _starts(line: str) -> list[int]:
    """The terminal column where each space-free run of `line` starts (wide characters take two columns)."""
    return [cell_len(line[:found.start()]) for found in re.finditer(r"\S+", line)]


def test_the_table_has_a_header_and_every_row_starts_its_columns_where_the_header_does():
    lines = _table(_rows(), io.StringIO(), labels=["cat", "dog", "猫猫", "averyveryverylonglabelindeed"])
    header, cat, deep, broken = lines
    assert header.split() == ["path", "top-1", "score", "top-2", "score"]
    assert _starts(cat) == _starts(header) and _starts(deep) == _starts(header)
    assert cat.split() == ["photos/cat.jpg", "cat", "0.910", "dog", "0.050"]
    assert all(cell_len(line) <= PIPE_WIDTH for line in lines)
    # the long path keeps its end, the long label its start, each cut with an ellipsis
    path, label1, score1, label2, score2 = deep.split()
    assert path.startswith("…") and path.endswith("long-name/deep.jpg") and len(path) < len(_rows()[1]["path"])
    assert label1 == "猫猫" and score1 == "1.000" and label2.startswith("averyvery") and label2.endswith("…")
    assert score2 == "0.000"
    # an error takes the place of the predictions, in its own row
    assert broken.split()[0] == "photos/broken.jpg" and _starts(broken)[1] == _starts(header)[1]
    assert broken.split(None, 1)[1] == "ERROR: not an image: cannot identify image file"


def test_without_hints_the_columns_still_align_and_control_characters_are_shown_not_sent():
    rows = _rows() + [{"path": "new\nline\x1b[31m.jpg", "top_k": [{"index": 0, "label": "cat", "score": 0.5}],
                       "error": None}]
    lines = _table(rows, io.StringIO())
    assert len(lines) == 1 + len(rows)  # the newline in the name did not start another line
    assert "\x1b" not in "".join(lines) and lines[-1].startswith("new\\x0aline\\x1b[31m.jpg")
    assert _starts(lines[1]) == _starts(lines[0])
    assert _starts(lines[-1])[:3] == _starts(lines[0])[:3]  # one prediction of two: its columns where they belong


def test_rows_are_written_as_they_come():
    seen = []
    out = io.StringIO()

    def rows():
        for row in _rows():
            yield row
            seen.append(out.getvalue().count("\n"))  # lines on the stream when the next row is asked for

    write_rows(rows(), "table", out, 2)
    assert seen == [2, 3, 4]  # the header and every row so far, before the next one exists


def test_a_pipe_or_file_gets_no_escape_codes_a_terminal_gets_colour_unless_no_color(terminal_env, monkeypatch):
    plain = _table(_rows(), io.StringIO())
    assert not ANSI.search("\n".join(plain))
    coloured = Terminal()
    write_rows(iter(_rows()), "table", coloured, 2)
    assert ANSI.search(coloured.getvalue()) and "\x1b[31m" in coloured.getvalue()  # the error in red
    assert ANSI.sub("", coloured.getvalue()).splitlines() == plain  # the same table, in colour
    monkeypatch.setenv("NO_COLOR", "1")
    assert _table(_rows(), Terminal()) == plain


def test_classify_on_a_terminal_is_coloured_and_in_a_pipe_is_not(images, terminal_env):
    args = [sys.executable, "-m", "vitkit", "classify", str(images), "--model", DIGITS, "--top-k", "2",
            "--workers", "0"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    piped = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert not ANSI.search(piped.stdout) and piped.stdout.splitlines()[0].split()[:2] == ["path", "top-1"]
    main, secondary = pty.openpty()
    done = subprocess.run(args, env=env, stdout=secondary, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the other end is closed and everything was read
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert done.returncode == 0, done.stderr
    text = seen.decode().replace("\r\n", "\n")
    assert ANSI.search(text)
    assert ANSI.sub("", text) == piped.stdout  # the same rows, in colour


def _cli(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tsv_is_path_tab_predictions_as_before(images, capsys):
    common = [images, "--model", DIGITS, "--top-k", "3", "--workers", "0", "--no-progress"]
    code, out, _ = _cli(["classify", *common, "--format", "jsonl"], capsys)
    assert code == 0
    expected = []
    for row in map(json.loads, out.splitlines()):
        cells = "ERROR: " + row["error"] if row["error"] else ", ".join(
            f"{p['label']} ({p['score']:.3f})" for p in row["top_k"])
        expected.append(f"{row['path']}\t{cells}")
    code, out, _ = _cli(["classify", *common, "--format", "tsv"], capsys)
    assert code == 0 and out.splitlines() == expected and len(expected) == 4


def test_every_format_is_written_to_an_output_file_as_to_stdout(images, tmp_path, capsys):
    common = [images, "--model", DIGITS, "--top-k", "2", "--workers", "0", "--no-progress"]
    for fmt in FORMATS:
        code, printed, _ = _cli(["classify", *common, "--format", fmt], capsys)
        assert code == 0, fmt
        target = tmp_path / f"rows.{fmt}"
        code, _, err = _cli(["classify", *common, "--format", fmt, "--output", target], capsys)
        assert code == 0 and f"wrote {target}" in err, (fmt, err)
        with open(target, newline="") as file:  # csv's \r\n as written
            written = file.read()
        assert written == printed, fmt  # a file is not a terminal: the table is the plain 100-column one
    with open(tmp_path / "rows.csv", newline="") as file:
        rows = {row["path"].rsplit("/", 1)[1]: row for row in csv.DictReader(file)}
    assert rows["digit_0.png"]["top1_label"] in tuple("0123456789") and rows["broken.jpg"]["error"]
    table = (tmp_path / "rows.table").read_text().splitlines()
    assert table[0].split() == ["path", "top-1", "score", "top-2", "score"] and len(table) == 5
    assert not ANSI.search("\n".join(table))


def test_a_row_lands_above_a_progress_bar_on_the_same_terminal(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0)
    row = {"path": "a.jpg", "top_k": [{"index": 0, "label": "cat", "score": 0.5}], "error": None}
    with progress.bar(10, "classify") as done:
        done.update(3)
        done.refresh()
        drawn = screen.getvalue()
        assert "classify" in drawn and "3/10" in drawn
        write_rows([row], "tsv", screen, 1)
    after = screen.getvalue()[len(drawn):]
    assert after.startswith("\r") and "\ra.jpg\tcat (0.500)\n" in after  # the bar was cleared first
    assert "3/10" in after.split("a.jpg\tcat (0.500)\n", 1)[1]  # and drawn again below the row


def test_a_spinner_shows_only_on_a_terminal_and_only_for_work_longer_than_a_second(monkeypatch, terminal_env):
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    with progress.spinner("quick work"):
        pass
    assert screen.getvalue() == ""
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.05)
    with progress.spinner("slow work"):
        time.sleep(0.5)
    assert "slow work" in screen.getvalue()
    with progress.spinner("unwanted", show=False):
        time.sleep(0.2)
    assert "unwanted" not in screen.getvalue()
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    with progress.spinner("into a log"):
        time.sleep(0.2)
    assert log.getvalue() == ""


def test_bench_progress_goes_to_stderr_and_its_result_alone_to_stdout(monkeypatch, capsys, tmp_path):
    from vitkit.runtime import machine

    def probe(reps: int = 8):  # a quick stand-in for measuring the GEMM peaks, cached in this test's folder
        time.sleep(0.3)
        return dataclasses.replace(machine.describe(), peaks={"fp32": 100.0})

    monkeypatch.setenv("VITKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(machine, "probe", probe)
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0)
    code, out, err = _cli(["bench", "--model", DIGITS, "--warmup", "1", "--iters", "5", "--json"], capsys)
    assert code == 0
    result = json.loads(out)  # one JSON object, nothing else
    assert result["peak_gflop_s"] == 100.0 and "bench" not in out
    assert re.search(r"bench: .*/6 \[", err), err
    code, out, err = _cli(["bench", "--model", DIGITS, "--iters", "2", "--no-progress"], capsys)
    assert code == 0 and out.startswith(f"{DIGITS}: ") and "bench:" not in err


def test_export_shows_a_spinner_on_stderr_and_prints_only_its_report(monkeypatch, capsys, tmp_path, terminal_env):
    pytest.importorskip("onnxruntime")
    screen = Terminal()
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0)
    monkeypatch.setattr(sys, "stderr", screen)
    code = cli.main(["export", "onnx", "--model", DIGITS, "--out", str(tmp_path / "d.onnx"), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    assert json.loads(out)["path"] == str(tmp_path / "d.onnx")  # the report, nothing else
    assert "ONNX export, then verification with onnxruntime" in screen.getvalue()


def test_eval_progress_goes_to_stderr(images, monkeypatch, capsys):
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0)
    for i in range(3):  # class folders named after the digits model's labels
        (images / str(i)).mkdir()
        (images / f"digit_{i}.png").rename(images / str(i) / "a.png")
    (images / "broken.jpg").unlink()
    code, out, err = _cli(["eval", images, "--model", DIGITS, "--json", "--workers", "0"], capsys)
    assert code == 0 and json.loads(out)["count"] == 3
    assert re.search(r"eval: .*/3 \[", err), err
