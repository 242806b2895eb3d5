"""Hostile inputs, absurd settings and concurrent jobs against the command line (issue #13): each costs
bounded memory and time, gets a one-line error (or its own error row) and loses nothing else.

Memory is the peak RSS of a fresh `vitkit` process (tests/hostile.py: run_measured), compared with the same
command on an ordinary photo. The model is DeiT-Tiny's architecture with random weights (no downloads).

Run:  .venv/bin/python -m pytest tests/test_hostile.py -q
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image

import hostile
from hostile import run_measured

MODEL = ["--arch", "deit_tiny_patch16_224"]
BOUND_MB = 300  # more than the same command on an ordinary photo
VITKIT = [sys.executable, "-m", "vitkit"]


def one_line_error(result: dict) -> str:
    """The error line of a failed run; asserts there is one and no traceback."""
    err = result["stderr"]
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("baseline")
    result = run_measured(["classify", hostile.photo(tmp / "ok.png"), *MODEL, "--workers", "0", "--format", "jsonl"],
                          tmp)
    assert result["rc"] == 0, result["stderr"]
    return result


def rows_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- 1, 2: memory bombs
@pytest.mark.parametrize("size", [(1, 50_000), (50_000, 1), (3, 30_000)])
def test_thin_strips_cost_bounded_memory(tmp_path, baseline, report, size):
    path = hostile.strip(tmp_path / "strip.png", *size)
    result = run_measured(["classify", path, *MODEL, "--workers", "0", "--format", "jsonl"], tmp_path)
    grew = result["peak_mb"] - baseline["peak_mb"]
    report(f"hostile: {size[0]}x{size[1]} PNG ({path.stat().st_size} bytes): classified in {result['seconds']:.1f} s, "
           f"peak RSS {result['peak_mb']:.0f} MB ({grew:+.0f} MB vs an ordinary photo)")
    assert result["rc"] == 0 and rows_of(result["stdout"])[0]["error"] is None
    assert grew < BOUND_MB and result["seconds"] < baseline["seconds"] + 10


@pytest.mark.parametrize("maker", [hostile.ico_bomb, hostile.icns_bomb])
def test_containers_that_decode_on_open_are_refused_before_decoding(tmp_path, baseline, report, maker):
    path = maker(tmp_path / ("bomb" + (".ico" if maker is hostile.ico_bomb else ".icns")))
    result = run_measured(["classify", path, *MODEL, "--workers", "0", "--format", "jsonl"], tmp_path)
    (row,) = rows_of(result["stdout"])
    grew = result["peak_mb"] - baseline["peak_mb"]
    report(f"hostile: {path.name} ({path.stat().st_size / 1e6:.1f} MB, a 20000x20000 PNG inside): {row['error']!r} "
           f"in {result['seconds']:.1f} s, {grew:+.0f} MB")
    assert result["rc"] == 1 and "files are not read by vitkit" in row["error"]  # every input failed: rc 1
    assert grew < BOUND_MB


def test_the_decoder_allowlist_leaves_pillow_plugins_unrun():
    from PIL import Image as PILImage

    from vitkit.limits import IMAGE_FORMATS

    assert not {"ICO", "ICNS", "EPS", "PSD"} & set(IMAGE_FORMATS)
    assert set(IMAGE_FORMATS) <= set(PILImage.registered_extensions().values()) | {"MPO"}


# ----------------------------------------------------------------------------- 3: any decoder failure is a row
@pytest.mark.slow
def test_a_corrupt_avif_is_its_own_row_in_every_batch_command(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        hostile.photo(folder / f"ok{i}.png", seed=i)
    bad = hostile.corrupt_avif(folder / "broken.avif")
    common = [*MODEL, "--workers", "1", "--no-progress"]
    classify = run_measured(["classify", folder, *common, "--format", "jsonl", "-o", tmp_path / "c.jsonl"], tmp_path)
    assert classify["rc"] == 0, classify["stderr"]
    rows = rows_of((tmp_path / "c.jsonl").read_text())
    assert len(rows) == 4 and [r["path"] for r in rows if r["error"]] == [str(bad)]
    embed = run_measured(["embed", folder, *common, "-o", tmp_path / "e.npy"], tmp_path)
    assert embed["rc"] == 0, embed["stderr"]
    embedded = rows_of((tmp_path / "e.rows.jsonl").read_text())[1:]
    assert len(embedded) == 4 and sum(r["error"] is not None for r in embedded) == 1
    assert np.isnan(np.load(tmp_path / "e.npy")).all(axis=1).tolist() == [r["error"] is not None for r in embedded]
    index = run_measured(["index", "add", tmp_path / "db", folder, *MODEL, "--workers", "1"], tmp_path)
    assert index["rc"] == 0, index["stderr"]
    assert "3 new images embedded" in index["stdout"] and "1 unreadable" in index["stdout"]


# ----------------------------------------------------------------------------- 4: one job per output
@pytest.mark.slow
def test_a_second_job_on_the_same_output_is_refused(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    hostile.photo(folder / "a.png")
    out = tmp_path / "same.jsonl"
    parts = tmp_path / "same.jsonl.parts"
    parts.mkdir()
    with FileLock(parts / "job.lock", timeout=0):  # what a running job holds
        busy = run_measured(["classify", folder, *MODEL, "--format", "jsonl", "-o", out], tmp_path)
    assert busy["rc"] == 2 and "another job is writing" in one_line_error(busy)
    (parts / "part-0000000.safetensors").write_bytes(b"x")  # parts whose job is unknown
    foreign = run_measured(["classify", folder, *MODEL, "--format", "jsonl", "-o", out], tmp_path)
    assert foreign["rc"] == 2 and "without a job.json" in one_line_error(foreign)
    assert not out.exists()


# ----------------------------------------------------------------------------- 5, 6: absurd models
@pytest.mark.parametrize("config, preprocessor, field", [
    ({"num_hidden_layers": 1_000_000_000}, {}, "depth"),
    ({"image_size": 16000}, {}, "image_size"),
    ({"image_size": "224"}, {}, "image_size"),
    ({"num_attention_heads": 0}, {}, "heads"),
    ({"patch_size": 0}, {}, "patch_size"),
    ({"layer_norm_eps": -1}, {}, "norm_eps"),
    ({}, {"size": {"height": 100000, "width": 100000}}, "input_size"),
    ({"hidden_size": "wide"}, {}, "width"),
    ({"num_hidden_layers": None}, {}, "depth"),
])
def test_absurd_configs_are_refused_before_allocating(tmp_path, baseline, config, preprocessor, field):
    folder = hostile.hf_folder(tmp_path / "model", config, preprocessor)
    result = run_measured(["info", folder], tmp_path, timeout=60)
    line = one_line_error(result)
    source = "preprocessor_config.json" if preprocessor else "config.json"
    assert result["rc"] == 2 and field in line and source in line, line
    assert result["seconds"] < 10 and result["peak_mb"] < baseline["peak_mb"] + BOUND_MB


@pytest.mark.slow
def test_an_image_size_beyond_the_limits_is_refused_at_parse_time(tmp_path):
    result = run_measured(["classify", "x.png", *MODEL, "--image-size", "100000"], tmp_path)
    assert result["rc"] == 2 and "100000 is outside" in result["stderr"]
    result = run_measured(["classify", hostile.photo(tmp_path / "a.png"), *MODEL, "--image-size", "4000"], tmp_path)
    assert result["rc"] == 2 and "tokens per image" in one_line_error(result)


def test_an_npz_zip_bomb_is_refused_before_reading(tmp_path, baseline, report):
    bomb = hostile.npz_bomb(tmp_path / "vit.npz")
    result = run_measured(["info", bomb, "--arch", "vit_base_patch16_224"], tmp_path)
    line = one_line_error(result)
    report(f"hostile: {bomb.stat().st_size / 1e6:.1f} MB .npz holding 512 MB: refused in {result['seconds']:.1f} s, "
           f"peak {result['peak_mb']:.0f} MB")
    assert result["rc"] == 2 and "zip bomb" in line
    assert result["seconds"] < 5 and result["peak_mb"] < baseline["peak_mb"] + BOUND_MB


@pytest.mark.parametrize("case", ["safetensors", "index"])
def test_broken_checkpoint_files_give_one_line(tmp_path, case):
    if case == "safetensors":
        target = hostile.malformed_safetensors(tmp_path / "model.safetensors")
        args = ["info", target, *MODEL]
        expected = "not a readable safetensors file"
    else:
        target = tmp_path / "model.safetensors.index.json"
        target.write_text(json.dumps({"metadata": {}}))
        args = ["info", target, *MODEL]
        expected = "not a sharded checkpoint index"
    result = run_measured(args, tmp_path)
    assert result["rc"] == 2 and expected in one_line_error(result)


# ----------------------------------------------------------------------------- 7: files that are not files
@pytest.mark.slow
def test_a_fifo_on_the_command_line_gets_an_error_row(tmp_path):
    pipe = hostile.fifo(tmp_path / "pipe.jpg")
    good = hostile.photo(tmp_path / "good.png")
    result = run_measured(["classify", pipe, good, *MODEL, "--format", "jsonl", "--workers", "0"], tmp_path, 60)
    rows = rows_of(result["stdout"])
    assert result["rc"] == 0 and rows[0]["error"] == "not a regular file (a FIFO)" and rows[1]["error"] is None
    index = run_measured(["index", "add", tmp_path / "db", pipe, good, *MODEL, "--workers", "0"], tmp_path, 60)
    assert index["rc"] == 0 and "1 unreadable" in index["stdout"]


# ----------------------------------------------------------------------------- 8: strange names
@pytest.mark.slow
def test_names_that_are_not_utf8_or_hold_a_newline(tmp_path):
    folder = tmp_path / "photos"
    (folder / "one").mkdir(parents=True)
    (folder / "two").mkdir()
    odd = hostile.non_utf8_name(folder)
    newline = hostile.photo(folder / "line\nbreak.png", seed=2)
    twins = [hostile.photo(folder / "one" / "x.png", seed=3), hostile.photo(folder / "two" / "x.png", seed=4),
             hostile.photo(folder / "x-1.png", seed=5)]
    common = [*MODEL, "--workers", "0", "--no-progress"]
    embed = run_measured(["embed", folder, *common, "-o", tmp_path / "e.npy"], tmp_path)
    assert embed["rc"] == 0, embed["stderr"]
    paths = [r["path"] for r in rows_of((tmp_path / "e.rows.jsonl").read_text())[1:]]
    assert str(odd) in paths and str(newline) in paths and len(paths) == 5  # the names round-trip exactly
    classify = run_measured(["classify", folder, *common, "--format", "jsonl", "-o", tmp_path / "c.jsonl"], tmp_path)
    assert classify["rc"] == 0 and {r["path"] for r in rows_of((tmp_path / "c.jsonl").read_text())} == set(paths)
    explain = run_measured(["explain", folder, *common, "--out", tmp_path / "ex"], tmp_path)
    assert explain["rc"] == 0, explain["stderr"]
    explained = rows_of((tmp_path / "ex" / "explain.jsonl").read_text())
    pngs = [r["png"] for r in explained]
    assert len(set(pngs)) == 5 and all(Path(p).is_file() for p in pngs)  # no two inputs share a PNG
    index = run_measured(["index", "add", tmp_path / "db", folder, *common], tmp_path)
    assert index["rc"] == 0 and "4 new images embedded" in index["stdout"] and "1 unreadable" in index["stdout"]
    assert twins[0].is_file()


# ----------------------------------------------------------------------------- 10: workers die with their parent
@pytest.mark.slow
@pytest.mark.parametrize("command", ["embed", "index"])
def test_workers_die_with_their_parent(tmp_path, command):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(300):
        hostile.photo(folder / f"{i:03d}.png", size=(640, 480), seed=i)
    args = (["embed", folder, "--arch", "vit_base_patch16_224", "--workers", "2", "-o", tmp_path / "e.npy"]
            if command == "embed" else
            ["index", "add", tmp_path / "db", folder, "--arch", "vit_base_patch16_224", "--workers", "2"])
    process = subprocess.Popen([*VITKIT, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, found = time.monotonic() + 60, set()
        while time.monotonic() < deadline and len(found) < 2:
            found = descendants(process.pid)
            time.sleep(0.5)
        assert len(found) >= 2, "the workers never started"
        time.sleep(2)
        found = descendants(process.pid)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(pid) for pid in found):
        time.sleep(0.5)
    assert not [pid for pid in found if alive(pid)], f"left behind: {[cmdline(p) for p in found if alive(p)]}"


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


# ----------------------------------------------------------------------------- 11, 12: settings and errors
@pytest.mark.parametrize("extra", [
    ["--batch-size", "-4"], ["--batch-size", "0"], ["--chunk-size", "-16"], ["--top-k", "0"], ["--image-size", "0"],
    ["--max-pixels", "-1"], ["--workers", "1000"], ["--batch-size", "many"],
])
def test_bad_settings_are_refused_at_parse_time(tmp_path, extra):
    result = run_measured(["classify", hostile.photo(tmp_path / "a.png"), *MODEL, *extra], tmp_path)
    assert result["rc"] == 2 and "Traceback" not in result["stderr"]
    assert f"argument {extra[0]}" in result["stderr"]


@pytest.mark.slow
def test_settings_checked_against_the_model_before_any_work(tmp_path):
    photo = hostile.photo(tmp_path / "a.png")
    layers = run_measured(["embed", photo, *MODEL, "--layers", "12", "-o", tmp_path / "e.npy"], tmp_path)
    assert layers["rc"] == 2 and "has 12 blocks" in one_line_error(layers)
    assert not (tmp_path / "e.npy.parts").exists(), "a refused job leaves no parts behind"
    (tmp_path / "folder.jsonl").mkdir()
    folder = run_measured(["classify", photo, *MODEL, "-o", tmp_path / "folder.jsonl"], tmp_path)
    assert folder["rc"] == 2 and "is a folder" in one_line_error(folder)
    explain = run_measured(["explain", photo, *MODEL, "--out", photo], tmp_path)
    assert explain["rc"] == 2 and "is a file" in one_line_error(explain)
    search = run_measured(["index", "search", tmp_path / "db", photo, "--k", "1000000000000"], tmp_path)
    assert search["rc"] == 2 and "argument --k" in search["stderr"] and "Traceback" not in search["stderr"]


@pytest.mark.slow
def test_every_input_failing_is_a_failure(tmp_path):
    result = run_measured(["classify", tmp_path / "nosuch", *MODEL, "--format", "jsonl"], tmp_path)
    assert result["rc"] == 1 and rows_of(result["stdout"])[0]["error"] == "no such file"
    empty = run_measured(["classify", "", *MODEL], tmp_path)
    assert empty["rc"] == 2 and "empty input path" in one_line_error(empty)


def test_a_closed_pipe_is_quiet(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(40):
        hostile.photo(folder / f"{i}.png", size=(64, 64), seed=i)
    piped = subprocess.run(f"{sys.executable} -m vitkit classify {folder} --arch vit_tiny_patch16_224 "
                           "--image-size 64 --workers 0 --batch-size 2 | head -c 10", shell=True,
                           capture_output=True, timeout=120)
    assert b"Traceback" not in piped.stderr and b"BrokenPipe" not in piped.stderr, piped.stderr[-2000:]


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_full_disk_or_a_read_only_folder_is_one_line(tmp_path, monkeypatch, capsys, error):
    """Writing the output fails as a full disk, a folder without write permission or a read-only file system
    make it fail (simulated: the tests run as root, who may write anywhere)."""
    import vitkit.batch.job
    from vitkit.cli import main

    def refuse(target):
        raise OSError(error, os.strerror(error), str(target))

    monkeypatch.setattr(vitkit.batch.job, "atomic_path", refuse)
    code = main(["classify", str(hostile.photo(tmp_path / "a.png")), *MODEL, "--workers", "0", "--no-progress",
                 "-o", str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and os.strerror(error) in err.splitlines()[-1]


# ----------------------------------------------------------------------------- 13: folder scans
def test_folder_scans_reach_any_depth_cut_loops_and_say_what_they_skip(tmp_path, request):
    root = tmp_path / "photos"
    request.addfinalizer(lambda: hostile.remove_tree(root))  # pytest's own clean-up recurses
    deep = hostile.deep_folders(root, 1100)
    hostile.photo(root / "top.png")
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "icon.ico").write_bytes(b"\x00\x00\x01\x00")
    (root / "layers.psd").write_bytes(b"8BPS")
    (root / "notes.txt").write_text("hello")
    result = run_measured(["classify", root, *MODEL, "--format", "jsonl", "--workers", "0"], tmp_path)
    assert result["rc"] == 0, result["stderr"][-2000:]
    assert {r["path"] for r in rows_of(result["stdout"])} == {str(deep), str(root / "top.png")}
    note = next(line for line in result["stderr"].splitlines() if line.startswith("note: skipped"))
    assert "1 .ico files" in note and "1 .psd files" in note and "1 files that are not images" in note
    assert "1 symlink loops" in note


def test_written_model_files_have_the_usual_permissions(tmp_path):
    digits = Path(__file__).resolve().parents[1] / "vitkit" / "assets" / "digits-vit"
    result = run_measured(["convert", digits, "--to", "hf", "--out", tmp_path / "hf"], tmp_path)
    assert result["rc"] == 0, result["stderr"]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE((tmp_path / "hf" / name).stat().st_mode) == 0o666 & ~umask, name
    Image.open(hostile.photo(tmp_path / "x.png"))  # the helpers still make ordinary files


@pytest.mark.parametrize("extra", [["--decode-concurrency", "0"], ["--timeout", "-1"], ["--max-upload-mb", "-1"],
                                   ["--port", "70000"], ["--header-timeout", "0"]])
def test_bad_service_settings_are_refused_at_start(tmp_path, extra):
    result = run_measured(["serve", *MODEL, *extra], tmp_path)
    assert result["rc"] == 2 and f"argument {extra[0]}" in result["stderr"] and "Traceback" not in result["stderr"]


@pytest.mark.slow
def test_a_second_first_time_index_add_is_one_line_and_a_reader_sees_later_commits(tmp_path):
    from vitkit.index import ImageIndex
    from vitkit.index.store import WRITE_LOCK

    folder = tmp_path / "photos"
    folder.mkdir()
    first = hostile.photo(folder / "a.png", size=(64, 64))
    db = tmp_path / "db"
    db.mkdir()
    digits = ["--model", Path(__file__).resolve().parents[1] / "vitkit" / "assets" / "digits-vit"]  # fixed weights
    with FileLock(db / WRITE_LOCK, timeout=0):  # another `index add` is creating this index right now
        racing = run_measured(["index", "add", db, folder, *digits, "--workers", "0"], tmp_path)
    assert racing["rc"] == 2 and "another process is writing" in one_line_error(racing)
    assert run_measured(["index", "add", db, first, *digits, "--workers", "0"], tmp_path)["rc"] == 0
    reader = ImageIndex.open(db)  # e.g. `vitkit serve --index db`, started now
    assert reader.info["count"] == 1
    hostile.photo(folder / "b.png", size=(64, 64), seed=9)
    assert run_measured(["index", "add", db, folder, *digits, "--workers", "0"], tmp_path)["rc"] == 0
    time.sleep(2.5)  # the store's read-consistency interval
    assert reader.info["count"] == 2, "a served index sees what a later `index add` committed"
