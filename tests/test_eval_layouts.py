"""`vitkit eval` on the layouts ImageNet ships in, built from the 100 shared photos, against a direct
computation (the same model's top-5 per photo, compared with labels.csv by class index):

- the shared folder itself (flat, its labels.csv found beside the images), synset folders (n01440764/),
  numbered folders (ImageNetV2's 0/ ... 999/), a flat folder with LOC_val_solution.csv, with CSVs of
  path,class_index / path,wnid / path,label, and with 'file index' lines: all give the direct computation's
  top-1 and top-5 exactly;
- ImageNet-ReaL: a hand-made real.json (some images with a second right label, some with none) scores
  "any of the labels" and skips, and counts, the unlabelled ones;
- class identity is the index: the two "crane" classes (134, 517) and two "maillot" classes are told apart
  by synset and index, and a folder named "crane" is refused with the two indices;
- the report: the published figure beside the measured one (and the protocol difference), a small
  report.json, the full confusion matrix in confusion.npy, one predictions.jsonl row per image; an
  unreadable photo is left out and reported, never scored;
- clear errors: a flat folder without labels, a train/ folder without val/, folders that are not the
  model's labels (the error lists what was expected);
- without ../shared: the shipped digits model on scikit-learn digits in class folders equals a direct
  computation too.

Run:  .venv/bin/python -m pytest tests/test_eval_layouts.py -q
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import vitkit
from vitkit.cli import main as cli
from vitkit.evaluate import report as eval_report
from vitkit.evaluate.layouts import ClassIndex, LayoutError, read_eval_set
from vitkit.evaluate.metrics import score, wilson
from vitkit.evaluate.run import evaluate_folder
from vitkit.labels import imagenet_1k, imagenet_1k_wnids

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "deit-tiny-patch16-224" / "model.safetensors"
PHOTOS = SHARED / "images" / "imagenet-sample-100"
ARCH = "deit_tiny_patch16_224"
SUBSET = 30  # photos per derived layout (all 100 for the shared folder itself)

needs_shared = pytest.mark.skipif(not (WEIGHTS.is_file() and (PHOTOS / "labels.csv").is_file()),
                                  reason=f"needs the real DeiT-Ti and photos under {SHARED} (absent in a fresh clone)")
pytestmark = pytest.mark.usefixtures("one_thread")


def train_digits_example():
    """examples/train_digits.py as a module (its digit_image draws scans as the shipped model saw them)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"
    spec = importlib.util.spec_from_file_location("train_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def labelled() -> list[dict]:
    with open(PHOTOS / "labels.csv", newline="") as fh:
        return [{"file": r["file"], "wnid": r["wnid"], "index": int(r["class_index"]), "name": r["class_name"]}
                for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def deit():
    return vitkit.load(str(WEIGHTS), ARCH)


@pytest.fixture(scope="module")
def direct(deit) -> dict[str, list[int]]:
    """file name -> the model's top-5 class indices, computed photo by photo."""
    out = {}
    for row in labelled():
        logits = deit(deit.preprocess(str(PHOTOS / row["file"])))
        out[row["file"]] = logits.topk(5, dim=-1).indices[0].tolist()
    return out


def expected(rows: list[dict], direct: dict[str, list[int]]) -> tuple[float, float]:
    top1 = np.mean([direct[r["file"]][0] == r["index"] for r in rows])
    top5 = np.mean([r["index"] in direct[r["file"]] for r in rows])
    return float(top1), float(top5)


def link(target: Path, source: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source, target)


def flat(root: Path, rows: list[dict], name=lambda r: r["file"]) -> Path:
    for r in rows:
        link(root / name(r), PHOTOS / r["file"])
    return root


def run(deit, data: Path, labels_file: Path | None = None, **kw):
    return evaluate_folder(deit, str(data), str(labels_file) if labels_file else None, progress=False, **kw)


# ----------------------------------------------------------------------------- the layouts, on real photos
@needs_shared
@pytest.mark.slow
def test_the_shared_folder_with_its_labels_csv(deit, direct, tmp_path, report):
    rows = labelled()
    ev = run(deit, PHOTOS, model_arg=str(WEIGHTS), arch=ARCH)
    assert "labels.csv" in ev.evalset.layout and ev.scores.count == 100
    assert (ev.scores.top1, ev.scores.top5) == pytest.approx(expected(rows, direct))
    assert ev.published[0] == "facebook/deit-tiny-patch16-224" and ev.published[2] is False
    assert ev.protocol_differences() == ["crop_pct 0.875 here, 0.9 published"]
    text = eval_report.summary(ev)
    assert "published for facebook/deit-tiny-patch16-224: top-1 72.19%" in text and "protocol differs" in text
    report(f"eval: real DeiT-Ti on the 100 photos (labels.csv, crop 0.875): top-1 {ev.scores.top1:.0%}, "
                f"top-5 {ev.scores.top5:.0%}; published (timm, 50k val, crop 0.9) 72.19% / 91.10%")


@needs_shared
@pytest.mark.parametrize("layout", ["synsets", "numbered"])
def test_synset_and_numbered_folders(deit, direct, tmp_path, layout):
    rows = labelled()[:SUBSET]
    folder = {"synsets": lambda r: r["wnid"], "numbered": lambda r: str(r["index"])}[layout]
    root = tmp_path / "data"
    for r in rows:
        link(root / folder(r) / r["file"], PHOTOS / r["file"])
    ev = run(deit, root)
    assert layout in ev.evalset.layout.replace("ImageNet synset", "synsets").replace("numbered class", "numbered")
    assert ev.scores.count == SUBSET
    assert (ev.scores.top1, ev.scores.top5) == pytest.approx(expected(rows, direct))


@needs_shared
@pytest.mark.parametrize("kind", ["loc", "index", "wnid", "label", "txt"])
def test_flat_folder_with_a_labels_file(deit, direct, tmp_path, kind):
    rows = labelled()[:SUBSET]
    stem = lambda r: Path(r["file"]).stem  # noqa: E731
    root = flat(tmp_path / "val", rows)
    if kind == "loc":  # ImageNet's LOC_val_solution.csv: ImageId without suffix, boxes after each id
        labels = tmp_path / "LOC_val_solution.csv"
        labels.write_text("ImageId,PredictionString\n" + "".join(
            f"{stem(r)},{r['wnid']} 10 20 200 300 {r['wnid']} 5 5 50 50\n" for r in rows))
    elif kind == "txt":
        labels = tmp_path / "val.txt"
        labels.write_text("".join(f"{r['file']} {r['index']}\n" for r in rows))
    else:
        column = {"index": "class_index", "wnid": "wnid", "label": "label"}[kind]
        value = {"index": "index", "wnid": "wnid", "label": "name"}[kind]
        labels = tmp_path / f"{kind}.csv"
        labels.write_text(f"path,{column}\n" + "".join(f"val/{r['file']},{r[value]}\n" for r in rows))
    ev = run(deit, root, labels)
    assert ev.scores.count == SUBSET and not ev.evalset.notes
    assert (ev.scores.top1, ev.scores.top5) == pytest.approx(expected(rows, direct))


@needs_shared
def test_imagenet_real_scores_any_of_the_labels_and_skips_unlabelled(deit, direct, tmp_path):
    rows = labelled()[:SUBSET]
    root = flat(tmp_path / "val", rows, name=lambda r: f"ILSVRC2012_val_{rows.index(r) + 1:08d}.JPEG")
    real, right1, right5, scored = [], 0, 0, 0
    for k, r in enumerate(rows):
        top = direct[r["file"]]
        if k % 5 == 0:
            accepted = []  # no ReaL label: skipped
        elif k % 5 == 1:
            accepted = [r["index"], top[0]]  # the model's top-1 is a second right answer
        elif k % 5 == 2:
            accepted = [top[4]]  # only its 5th guess is right
        else:
            accepted = [r["index"]]
        real.append(accepted)
        if accepted:
            scored += 1
            right1 += top[0] in accepted
            right5 += bool(set(top) & set(accepted))
    (tmp_path / "real.json").write_text(json.dumps(real))
    ev = run(deit, root, tmp_path / "real.json")
    assert ev.evalset.multi_label and ev.evalset.unlabelled == SUBSET // 5
    assert ev.scores.count == scored
    assert (ev.scores.top1_hits, ev.scores.top5_hits) == (right1, right5)
    assert "ReaL" in eval_report.summary(ev)


@needs_shared
def test_report_files_and_an_unreadable_photo(deit, direct, tmp_path):
    rows = labelled()[:SUBSET]
    root = tmp_path / "data"
    for r in rows:
        link(root / r["wnid"] / r["file"], PHOTOS / r["file"])
    (root / rows[0]["wnid"] / "broken.JPEG").write_bytes(b"\xff\xd8 not a jpeg")
    code = cli(["eval", str(root), "--model", str(WEIGHTS), "--arch", ARCH, "--out", str(tmp_path / "rep"),
                "--no-progress"])
    assert code == 0
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["count"] == SUBSET and saved["unreadable"] == 1
    assert saved["top1"] == pytest.approx(expected(rows, direct)[0])
    assert (tmp_path / "rep" / "report.json").stat().st_size < 100_000
    assert np.load(tmp_path / "rep" / "confusion.npy").shape == (1000, 1000)
    lines = (tmp_path / "rep" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == SUBSET + 1 and sum("error" in json.loads(line) for line in lines) == 1
    assert (tmp_path / "rep" / "confusion.png").stat().st_size > 0


# ----------------------------------------------------------------------------- class identity, by index
def test_duplicate_display_names_are_told_apart_by_index():
    classes = ClassIndex(imagenet_1k())
    names, wnids = imagenet_1k(), imagenet_1k_wnids()
    assert names[134] == names[517] == "crane" and names[638] == names[639] == "maillot"
    assert (wnids[134], wnids[517]) == ("n02012849", "n03126707")
    assert (classes.wnid("n02012849"), classes.wnid("n03126707")) == (134, 517)
    with pytest.raises(LayoutError, match=r"\[134, 517\]"):
        classes.name("crane")
    # predicted the bird crane for a photo of the machine crane: wrong, although the names are equal
    top5 = np.array([[134, 1, 2, 3, 4], [517, 1, 2, 3, 4]])
    result = score(top5, [(517,), (517,)], 1000)
    assert (result.top1_hits, result.top5_hits) == (1, 1)
    assert result.confusion[517, 134] == 1 and result.confusion[517, 517] == 1


def test_a_folder_named_after_a_shared_name_is_refused(tmp_path):
    (tmp_path / "crane").mkdir()
    (tmp_path / "tench").mkdir()
    with pytest.raises(LayoutError, match="crane.*134, 517"):
        read_eval_set(tmp_path, imagenet_1k())


def test_clear_errors(tmp_path):
    flat_folder = tmp_path / "flat"
    flat_folder.mkdir()
    (flat_folder / "a.jpg").write_bytes(b"x")
    with pytest.raises(LayoutError, match="no class folders and no labels file"):
        read_eval_set(flat_folder, imagenet_1k())
    (tmp_path / "split" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(LayoutError, match="train/ folder but no val/"):
        read_eval_set(tmp_path / "split", ("cat", "dog"))
    (tmp_path / "odd" / "parrots").mkdir(parents=True)
    with pytest.raises(LayoutError, match="not one of the model's 2 labels \\(cat, dog"):
        read_eval_set(tmp_path / "odd", ("cat", "dog"))


def test_wilson_interval():
    """Its bounds are the proportions p at which the observed rate is exactly z standard errors of p away."""
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)
    for hits, count in ((79, 100), (3, 7), (499, 500)):
        observed = hits / count
        for p in wilson(hits, count):
            assert abs(observed - p) == pytest.approx(1.959964 * np.sqrt(p * (1 - p) / count), rel=1e-6)


# ----------------------------------------------------------------------------- without ../shared
def test_shipped_digits_model_on_class_folders(tmp_path):
    from sklearn.datasets import load_digits

    digit_image = train_digits_example().digit_image

    digits = load_digits()
    model = vitkit.load(str(Path(vitkit.__file__).parent / "assets" / "digits-vit"))
    root, truth = tmp_path / "digits", {}
    for i in range(0, 300, 3):
        path = root / str(digits.target[i]) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        digit_image(digits.images[i]).save(path)
        truth[str(path)] = int(digits.target[i])
    ev = evaluate_folder(model, str(root), progress=False)
    assert "class folders named after the model's labels" in ev.evalset.layout
    with torch.inference_mode():
        hits = sum(int(model(model.preprocess(p)).argmax()) == y for p, y in truth.items())
    assert ev.scores.top1_hits == hits and ev.scores.count == len(truth)
    assert ev.scores.top1 > 0.9  # the shipped model is a real digits classifier
    assert ev.scores.top5 is not None
