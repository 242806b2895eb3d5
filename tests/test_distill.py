"""Knowledge distillation the way a user runs it: the shipped digits ViT (0.2 M parameters) as the teacher, a fresh
ViT of about a tenth its size as the student, an unlabelled folder of real handwritten digits (scikit-learn's
scans) as the data. Checked against independent anchors: the teacher's own predictions on held-out digits
(agreement), transformers' logits of the saved student, and an uninterrupted run (exact resume after SIGKILL).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vitkit
from vitkit.checkpoints.save import save_vitkit
from vitkit.models.vit import VisionTransformer
from vitkit.train.distill import SpecAdapter, kd_loss

from conftest import SLOW_STEP, sigkill_when

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from digit_sheets import sheet, write_digits, write_student  # noqa: E402  (examples/: the README's data)

DIGITS = Path(vitkit.__file__).parent / "assets" / "digits-vit"
RECIPE = ["--lr", "2e-3", "--layer-decay", "1", "--head-init", "random", "--hflip", "0", "--workers", "0"]  # a fresh student


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, list[str]]:
    """An unlabelled folder of 1,400 digits (nested, no class folders) and 397 held-out digit files
    (examples/digit_sheets.py, the README's worked example)."""
    sklearn = pytest.importorskip("sklearn.datasets")
    folder, held = write_digits(tmp_path_factory.mktemp("digits"), sklearn.load_digits().images)
    return folder, [str(p) for p in held]


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return write_student(tmp_path_factory.mktemp("student") / "s.safetensors")


def cli(*args) -> subprocess.CompletedProcess:
    """`vitkit ARGS` in a subprocess with one thread, as the SIGKILLed run gets: a second thread reorders float sums
    (the resume test compares runs bit for bit; tiny batches only lose from it on 2 cores)."""
    return subprocess.run([sys.executable, "-m", "vitkit", *map(str, args)], capture_output=True, text=True,
                          timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def distilled(digits, student, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    done = cli("distill", digits[0], "--teacher", DIGITS, "--student", student, "--out", out, "--epochs", "30",
               *RECIPE)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_the_student_agrees_with_the_teacher_on_held_out_digits(digits, distilled, report):
    teacher, student = vitkit.load(str(DIGITS)), vitkit.load(str(distilled))
    held = digits[1]
    ours = [r.label for r in student.classify(held, top_k=1, batch_size=64)]
    theirs = [r.label for r in teacher.classify(held, top_k=1, batch_size=64)]
    agreement = np.mean([a == b for a, b in zip(ours, theirs)])
    sizes = [sum(p.numel() for p in m.net.parameters()) for m in (student, teacher)]
    written = json.loads((distilled / "report.json").read_text())
    report(f"distill: digits teacher ({sizes[1] / 1e3:.0f}k parameters) -> student ({sizes[0] / 1e3:.0f}k) on 1,400 "
           f"unlabelled digits: held-out top-1 agreement {agreement:.1%} on {len(held)} digits; report.json: val "
           f"agreement {written['student']['agreement']:.1%}, {written['speedup']:.1f}x the teacher's img/s")
    assert agreement >= 0.90
    assert sizes[0] * 4 <= sizes[1]
    assert written["student"]["parameters"] == sizes[0] and written["teacher"]["parameters"] == sizes[1]
    assert written["student"]["agreement"] >= 0.85 and written["student"]["top1"] is None  # no labels given


@pytest.mark.slow
def test_the_student_reloads_in_transformers_with_the_same_logits(digits, distilled):
    from transformers import ViTForImageClassification

    student = vitkit.load(str(distilled))
    reference = ViTForImageClassification.from_pretrained(distilled).eval()
    pixels = student.preprocess(digits[1][:32])
    with torch.no_grad():
        theirs = reference(pixel_values=pixels).logits
    assert (student(pixels) - theirs).abs().max().item() <= 1e-4
    assert student.labels == vitkit.load(str(DIGITS)).labels


def _steps_logged(log: Path) -> int:
    return log.read_text().count('"kind": "step"') if log.is_file() else 0




@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(digits, student, tmp_path, report):
    args = ["distill", digits[0], "--teacher", DIGITS, "--student", student, "--epochs", "2", "--batch-size", "64",
            "--checkpoint-every", "3", "--teacher-views", "2", *RECIPE]
    clean = tmp_path / "clean"
    done = cli(*args, "--out", clean)
    assert done.returncode == 0, done.stderr[-2000:]
    out, log = tmp_path / "killed", tmp_path / "killed.stderr"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-c", SLOW_STEP, *map(str, args), "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=fh, env={**os.environ, "OMP_NUM_THREADS": "1"})
    sigkill_when(proc, lambda: _steps_logged(out / "log.jsonl") >= 4, "4 steps were logged", log)
    logged = _steps_logged(out / "log.jsonl")
    done = cli(*args, "--out", out, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = lambda folder: [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]  # noqa: E731
    ours = [(r["step"], r["loss"]) for r in rows(out) if r["kind"] == "step"]
    theirs = [(r["step"], r["loss"]) for r in rows(clean) if r["kind"] == "step"]
    assert [s for s, _ in ours] == [s for s, _ in theirs]
    curve = max(abs(a - b) for (_, a), (_, b) in zip(ours, theirs))
    a, b = vitkit.load(str(out)).net.state_dict(), vitkit.load(str(clean)).net.state_dict()
    weights = max((a[k] - b[k]).abs().max().item() for k in a)
    report(f"distill: SIGKILL after {logged} of {len(theirs)} steps, resumed: loss curve {curve:.1e}, saved "
           f"student {weights:.1e} from the uninterrupted run")
    assert 4 <= logged < len(theirs) and curve <= 1e-6 and weights <= 1e-6


# -- pieces ----------------------------------------------------------------------------------------------------
def test_kd_loss_is_the_kl_divergence_computed_by_hand():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 7), torch.randn(4, 7) * 3
    for t in (1.0, 4.0):
        p = (teacher / t).softmax(-1)
        direct = (p * (p.log() - (student / t).log_softmax(-1))).sum(-1).mean() * t * t
        assert kd_loss(student, teacher, t).item() == pytest.approx(direct.item(), rel=1e-5)
    assert kd_loss(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_the_spec_adapter_gives_the_teachers_own_pixels():
    from vitkit.config import PreprocessSpec
    from vitkit.data.transforms import preprocess_batch

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8))
    student = PreprocessSpec(input_size=32, crop_pct=1.0, resize_mode="exact", mean=(0.5,) * 3, std=(0.5,) * 3)
    teacher = PreprocessSpec(input_size=32, crop_pct=1.0, resize_mode="exact", mean=(0.485, 0.456, 0.406),
                             std=(0.229, 0.224, 0.225))
    adapted = SpecAdapter(student, teacher)(preprocess_batch([image], student))
    assert (adapted - preprocess_batch([image], teacher)).abs().max().item() <= 1e-5


@pytest.fixture(scope="module")
def labelled_digits(tmp_path_factory) -> Path:
    """Class folders named as the teacher's labels (0 ... 9), 8 digits each."""
    sklearn = pytest.importorskip("sklearn.datasets")
    data = sklearn.load_digits()
    root = tmp_path_factory.mktemp("labelled")
    for label in range(10):
        (root / str(label)).mkdir()
        for n, i in enumerate(np.flatnonzero(data.target == label)[:8]):
            sheet([data.images[i]]).save(root / str(label) / f"{n}.png")
    return root


@pytest.mark.slow
def test_a_deit_student_trains_its_distillation_head_on_the_teachers_labels(labelled_digits, student, tmp_path,
                                                                           monkeypatch):
    """Labelled data: the class head learns DATA's labels, the distillation head the teacher's top-1 (DeiT)."""
    from vitkit.train.config import DistillConfig
    from vitkit.train.distill import Distiller

    torch.manual_seed(0)
    teacher = vitkit.load(str(DIGITS))
    deit = vitkit.load(str(student)).config.replace(dist_token=True, family="deit")
    base = save_vitkit(VisionTransformer(deit), teacher.spec, tmp_path / "deit.safetensors")
    cfg = DistillConfig(data=str(labelled_digits), out=str(tmp_path / "out"), model=str(base), teacher=str(DIGITS),
                        epochs=1, batch_size=16, lr=1e-3, layer_decay=1.0, head_init="random", hflip=0.0,
                        workers=0, val_split=0.25, teacher_views=1)
    seen = []
    original = F.cross_entropy

    def spy(logits, target, *args, **kwargs):
        seen.append(target.clone())
        return original(logits, target, *args, **kwargs)

    monkeypatch.setattr("vitkit.train.distill.F.cross_entropy", spy)
    distiller = Distiller(cfg)
    assert distiller.labelled and distiller.metric == "top-1"
    before = {k: v.clone() for k, v in distiller.net.state_dict().items() if k.startswith(("head.", "head_dist."))}
    distiller.fit()
    after = distiller.net.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before), "both heads must train"
    assert seen, "no cross-entropy term ran"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["student"]["top1"] is not None and report["teacher"]["top1"] >= 0.9  # the teacher knows digits
