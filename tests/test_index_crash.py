"""`vitkit index add` killed with SIGKILL in the middle of 2,000 images, then run again: the index opens, no
content is stored twice, none is lost, and what was committed before the kill is not embedded again.

Real processes: `vitkit index add` runs in a subprocess with the shipped digits model (32 px input), committing
every 64 files; the test kills it once the table holds 320 committed rows.

Run:  .venv/bin/python -m pytest tests/test_index_crash.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("lancedb")

from test_index import DIGITS, write_images  # noqa: E402
from vitkit.index import ImageIndex  # noqa: E402

FILES, COPIES = 2000, 50  # 2,000 files, 50 of them byte-for-byte copies: 1,950 distinct images
KILL_AFTER = 320  # committed rows (5 commits of 64) before the kill


def add_command(db, photos) -> list[str]:
    argv = ["index", "add", str(db), str(photos), "--model", DIGITS, "--workers", "0", "--batch-size", "16",
            "--chunk-size", "64", "--no-progress", "--json"]
    code = f"import vitkit.cli as c; c.FEATURE_CLIS = ('vitkit.index.cli',); raise SystemExit(c.main({argv!r}))"
    return [sys.executable, "-c", code]


def committed_rows(db) -> int:
    """Rows in the table right now (0 while it does not exist yet or is being created)."""
    try:
        return ImageIndex.open(db).info["count"]
    except (FileNotFoundError, KeyError, OSError, RuntimeError, ValueError):
        return 0


@pytest.mark.slow
def test_sigkill_during_add_then_rerun(tmp_path, report):
    photos = tmp_path / "photos"
    originals = write_images(photos, FILES - COPIES, seed=0, side=8)
    for i, path in enumerate(originals[:COPIES]):
        shutil.copy(path, photos / f"copy-{i:02d}.png")
    db = tmp_path / "db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    writer = subprocess.Popen(add_command(db, photos), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while committed_rows(db) < KILL_AFTER:
        assert writer.poll() is None, f"add ended before any commit was seen: {writer.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no commit within 180 s"
        time.sleep(0.01)
    writer.send_signal(signal.SIGKILL)
    writer.communicate()
    assert writer.returncode == -signal.SIGKILL

    killed = ImageIndex.open(db)  # the DB opens after the kill
    at_kill = killed.info["count"]
    check = killed.stats(check=True)["check"]
    assert check["repeated_ids"] == check["repeated_paths"] == check["rows_without_files"] == 0
    assert 0 < at_kill < FILES - COPIES, "the kill did not land in the middle of the run"

    start = time.monotonic()
    rerun = subprocess.run(add_command(db, photos), env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - start
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    result = json.loads(rerun.stdout.splitlines()[-1])
    assert result["count"] == FILES - COPIES
    assert result["embedded"] == FILES - COPIES - at_kill  # nothing committed before the kill is embedded again
    assert result["errors"] == []

    stats = ImageIndex.open(db).stats(check=True)
    assert (stats["count"], stats["files"]) == (FILES - COPIES, FILES)  # no lost row, every file listed once
    check = stats["check"]
    assert check["repeated_ids"] == check["repeated_paths"] == check["rows_without_files"] == 0
    report(f"index: SIGKILL during add of {FILES} files: {at_kill} images committed at the kill; the re-run "
           f"embedded the other {result['embedded']} in {seconds:.1f} s; {stats['count']} images, "
           f"{stats['files']} files, 0 duplicates")
