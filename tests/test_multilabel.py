"""Multi-label classification end to end, the way a user runs it: a manifest of real handwritten digits (scikit-
learn's scans) written over each other two to an image, labels = the digits shown; `vitkit finetune --multi-label` with the
defaults from the shipped digits model; then the saved model's mAP on held-out sheets against scikit-learn
and a label-frequency baseline, its stored thresholds used by `vitkit classify` (checked against transformers'
logits of the same folder), `vitkit eval`, and the ONNX export keeping sigmoid outputs and thresholds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from vitkit.data.labelled import DatasetError
from vitkit.data.tagged import discover_tagged
from vitkit.multilabel import label_frequency_map

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from digit_sheets import write_tags  # noqa: E402  (examples/: the README's data)

DIGITS = Path(vitkit.__file__).parent / "assets" / "digits-vit"
CANVAS = 32  # the digits model's input size
SIZES = {"train": 700, "val": 150, "test": 200}


@pytest.fixture(scope="module")
def tags(tmp_path_factory) -> Path:
    """tags.csv (path,labels,split) over sheets of one or two distinct digits written over each other, from
    disjoint scan pools (examples/digit_sheets.py, the README's worked example)."""
    sklearn = pytest.importorskip("sklearn.datasets")
    digits = sklearn.load_digits()
    return write_tags(tmp_path_factory.mktemp("tags"), digits.images, digits.target)


def truth_matrix(items, num_classes: int) -> np.ndarray:
    hot = np.zeros((len(items), num_classes), np.int64)
    for row, (_, labels) in enumerate(items):
        hot[row, list(labels)] = 1
    return hot


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitkit", *map(str, args)], capture_output=True, text=True,
                          timeout=1800)


@pytest.fixture(scope="module")
def trained(tags, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    done = cli("finetune", tags, "--model", DIGITS, "--multi-label", "--out", out, "--workers", "0",
               "--hflip", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_finetuned_map_is_far_above_the_label_frequency_baseline(tags, trained, report):
    from sklearn.metrics import average_precision_score

    splits = discover_tagged(tags)
    model = vitkit.load(str(trained))
    assert model.config.multi_label and len(model.config.thresholds) == 10
    test = splits.test
    logits = torch.cat([model(model.preprocess([p for p, _ in test[i:i + 64]])) for i in range(0, len(test), 64)])
    truth = truth_matrix(test, 10)
    ours = average_precision_score(truth, logits.sigmoid().numpy(), average="macro")
    baseline = label_frequency_map(truth, truth_matrix(splits.train, 10))
    report(f"multi-label overlaid digits: held-out mAP {ours:.1%} (scikit-learn), label-frequency baseline "
           f"{baseline:.1%}; thresholds {[round(t, 2) for t in model.config.thresholds]}")
    assert ours >= 0.70 and ours >= baseline + 0.4


@pytest.mark.slow
def test_thresholds_are_stored_and_classify_uses_them(tags, trained, tmp_path):
    from transformers import ViTForImageClassification

    config = json.loads((trained / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    thresholds = np.array(config["vitkit_thresholds"])
    assert thresholds.shape == (10,) and not np.allclose(thresholds, 0.5)
    test = discover_tagged(tags).test[:40]
    reference = ViTForImageClassification.from_pretrained(trained).eval()
    assert reference.config.problem_type == "multi_label_classification"
    model = vitkit.load(str(trained))
    pixels = model.preprocess([p for p, _ in test])
    with torch.no_grad():
        theirs = reference(pixel_values=pixels).logits
    torch.testing.assert_close(model(pixels), theirs, atol=1e-4, rtol=1e-4)
    expected = {Path(p).name: {str(c) for c in np.flatnonzero(theirs[i].sigmoid().numpy() >= thresholds)}
                for i, (p, _) in enumerate(test)}
    done = cli("classify", *[p for p, _ in test], "--model", trained, "--format", "jsonl")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    got = {Path(r["path"]).name: {p["label"] for p in r["top_k"]} for r in rows}
    assert got == expected
    assert sum(len(v) for v in got.values()) > len(got)  # several labels per image, not one


@pytest.mark.slow
def test_eval_reports_map_and_f1_at_the_stored_thresholds(tags, trained, tmp_path):
    from sklearn.metrics import average_precision_score, f1_score

    done = cli("eval", tags, "--model", trained, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    splits = discover_tagged(tags)
    model = vitkit.load(str(trained))
    test = splits.test
    probs = torch.cat([model(model.preprocess([p for p, _ in test[i:i + 64]])) for i in range(0, len(test), 64)]
                      ).sigmoid().numpy()
    truth = truth_matrix(test, 10)
    decided = probs >= np.array(model.config.thresholds)
    assert result["count"] == len(test) and result["split"] == "test"
    assert result["map"] == pytest.approx(average_precision_score(truth, probs, average="macro"), abs=1e-6)
    assert result["micro_f1"] == pytest.approx(f1_score(truth, decided, average="micro"), abs=1e-6)
    assert result["macro_f1"] == pytest.approx(f1_score(truth, decided, average="macro"), abs=1e-6)
    assert set(result["per_class_ap"]) == {str(d) for d in range(10)}


@pytest.mark.slow
def test_onnx_export_keeps_sigmoid_outputs_and_thresholds(tags, trained, tmp_path):
    pytest.importorskip("onnxruntime")
    target = tmp_path / "tags.onnx"
    done = cli("export", "onnx", "--model", trained, "--out", target)
    assert done.returncode == 0, done.stderr[-2000:]
    exported, model = vitkit.load(str(target)), vitkit.load(str(trained))
    assert exported.config.multi_label and exported.config.thresholds == model.config.thresholds
    paths = [p for p, _ in discover_tagged(tags).test[:30]]
    ours, theirs = model.classify(paths, top_k=10), exported.classify(paths, top_k=10)
    assert [[p.label for p in r] for r in ours] == [[p.label for p in r] for r in theirs]
    import onnx

    props = {p.key: p.value for p in onnx.load(str(target)).metadata_props}
    assert json.loads(props["vitkit_scores"]) == {"activation": "sigmoid",
                                                  "thresholds": list(model.config.thresholds)}


# -- manifests ---------------------------------------------------------------------------------------------
def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)


def test_manifest_forms_give_the_same_label_sets(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        _image(tmp_path / name)
    (tmp_path / "pipes.csv").write_text("path,labels\na.png,cat|dog\nb.png,dog\nc.png,\n")
    (tmp_path / "lists.csv").write_text('path,labels\na.png,"[""dog"", ""cat""]"\nb.png,"[""dog""]"\nc.png,[]\n')
    (tmp_path / "onehot.csv").write_text("path,cat,dog\na.png,1,1\nb.png,0,1\nc.png,0,0\n")
    (tmp_path / "rows.jsonl").write_text('{"path": "a.png", "labels": ["cat", "dog"]}\n'
                                         '{"path": "b.png", "labels": "dog"}\n{"path": "c.png", "labels": []}\n')
    expected = [(str(tmp_path / "a.png"), (0, 1)), (str(tmp_path / "b.png"), (1,)), (str(tmp_path / "c.png"), ())]
    for manifest in ("pipes.csv", "lists.csv", "onehot.csv", "rows.jsonl"):
        splits = discover_tagged(tmp_path / manifest)
        assert splits.labels == ["cat", "dog"] and splits.train == expected, manifest


def test_validation_split_is_deterministic_and_disjoint(tmp_path):
    rows = ["path,labels"]
    for n in range(20):
        _image(tmp_path / f"{n}.png")
        rows.append(f"{n}.png,{'a|b' if n % 2 else 'a'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    first, second = discover_tagged(tmp_path / "m.csv", 0.2, 3), discover_tagged(tmp_path / "m.csv", 0.2, 3)
    assert first == second and len(first.val) == 4 and len(first.train) == 16
    assert not {p for p, _ in first.val} & {p for p, _ in first.train}


@pytest.mark.parametrize("text, message", [
    ("path,cat,dog\na.png,1,2\n", "one-hot columns hold 0 or 1"),
    ("path,labels\na.png,cat||dog\n", "an empty label name"),
    ("path,labels\nmissing.png,cat\n", "do not exist"),
    ("path,labels,split\na.png,cat,train\na.png,dog,val\n", "listed twice"),
    ('path,labels\na.png,"[""cat"",\n', "not a JSON list"),
])
def test_bad_manifests_say_what_is_wrong(tmp_path, text, message):
    _image(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(DatasetError, match=message):
        discover_tagged(tmp_path / "m.csv")


def test_a_class_folder_is_refused_with_the_manifest_forms(tmp_path):
    _image(tmp_path / "cat" / "a.png")
    with pytest.raises(DatasetError, match="manifest"):
        discover_tagged(tmp_path)


@pytest.mark.slow
def test_the_service_answers_with_the_labels_over_their_thresholds(tags, trained):
    from service_support import serve

    model = vitkit.load(str(trained))
    paths = [p for p, _ in discover_tagged(tags).test[:6]]
    want = model.classify(paths, top_k=10)
    with serve(model) as client:
        response = client.post("/v1/classify?top_k=10",
                               files=[("files", (Path(p).name, Path(p).read_bytes(), "image/png")) for p in paths])
    assert response.status_code == 200, response.text
    got = [[p["label"] for p in row["top_k"]] for row in response.json()["results"]]
    assert got == [[p.label for p in r] for r in want]
    assert all(p.score >= model.config.thresholds[p.index] for r in want for p in r)


@pytest.mark.slow
def test_int8_export_keeps_sigmoid_outputs_and_thresholds(tags, trained, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    target = tmp_path / "tags-int8.onnx"
    test = [p for p, _ in discover_tagged(tags).test]
    done = cli("quantize", "--model", trained, "--calib", *test[:32], "--out", target, "--no-speed", "--force")
    assert done.returncode == 0, done.stderr[-2000:]
    model, exported = vitkit.load(str(trained)), vitkit.load(str(target))
    props = {p.key: p.value for p in onnx.load(str(target)).metadata_props}
    assert json.loads(props["vitkit_scores"])["thresholds"] == list(model.config.thresholds)
    assert exported.config.multi_label and exported.config.thresholds == model.config.thresholds
    ours, theirs = model.classify(test[32:132], top_k=10), exported.classify(test[32:132], top_k=10)
    same = np.mean([{p.label for p in a} == {p.label for p in b} for a, b in zip(ours, theirs)])
    assert same >= 0.9, f"INT8 gives the fp32 label set on only {same:.0%} of 100 held-out images"
