"""precision="fast" / `--fast` (vitkit.runtime.fast), the machine probe (vitkit.runtime.machine) and `vitkit doctor`.

The gate refuses a candidate whose top-1 agreement or embedding cosine with exact fp32 is below the threshold and
falls back; the choice is cached and reused without measuring; every runtime it can choose keeps the rows, their
format and their order on a messy folder of real digit scans; the real DeiT-Tiny keeps >= 99% top-1 agreement on
the 100 shared photos with whatever it chose; FLOP counts match torch's own counter.

Run:  .venv/bin/python -m pytest tests/test_fast.py -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vitkit
import vitkit.cli as cli
from vitkit.runtime import fast
from vitkit.runtime.machine import machine, model_flops

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "vitkit" / "assets" / "digits-vit")  # 0.2M params, 32 px, labels 0-9
DEIT = ROOT.parent / "shared" / "weights" / "deit-tiny-patch16-224"
PHOTOS = ROOT.parent / "shared" / "images" / "imagenet-sample-100"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    """40 real digit scans (scikit-learn's digits, rendered as the shipped model was trained) and three bad files."""
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from train_digits import digit_image
    finally:
        sys.path.remove(str(ROOT / "examples"))
    folder = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    for i in range(40):
        digit_image(digits.images[i]).save(folder / f"{i:03d}_{digits.target[i]}.png")
    (folder / "005_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (folder / "017_text.jpg").write_text("hello")
    (folder / "031_empty.png").write_bytes(b"")
    return folder


def _images(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir())


class Noisy(torch.nn.Module):
    """A stand-in runtime that is fast and wrong: the exact network with noise on its logits and embeddings."""

    def __init__(self, net, logits: float, embeddings: float):
        super().__init__()
        self.net, self.config, self.scales = net, net.config, (logits, embeddings)

    @staticmethod
    def _noise(out, scale: float):  # a function of each output alone: the same in any batching
        return out + scale * torch.sin(1000 * out)

    def forward(self, pixels):
        return self._noise(self.net(pixels), self.scales[0])

    def pool_pixels(self, pixels, pool):
        return self._noise(self.net.pool_pixels(pixels, pool), self.scales[1])

    def forward_features(self, pixels):
        return self.net.forward_features(pixels)


def test_a_candidate_below_the_gate_is_refused_and_fp32_is_kept(digit_folder, monkeypatch):
    built = {}

    def build(runtime, net, spec, device, digest, calibration, source, log, keep=False):
        if runtime == "noisy":
            built["noisy"] = Noisy(net, logits=3.0, embeddings=0.0)
            return built["noisy"]
        return real_build(runtime, net, spec, device, digest, calibration, source, log, keep)

    real_build = fast.build
    monkeypatch.setattr(fast, "candidates", lambda device: ["fp32", "noisy"])
    monkeypatch.setattr(fast, "build", build)
    model = vitkit.load(DIGITS, precision="fast", batch_size=8, calibration=[str(digit_folder)])
    choice = model.fast
    noisy, exact = choice.trial("noisy"), choice.trial("fp32")
    assert choice.runtime == "fp32" and exact.accepted and exact.top1_agreement == 1.0
    assert not noisy.accepted and "top-1 agreement" in noisy.reason, noisy
    # the agreement it reports is the one computed directly on the same images (the 40 scans that decode)
    pixels, what = model._calibration([str(digit_folder)])
    assert len(pixels) == choice.inputs == 40 and what == "of the given images"
    plain = vitkit.load(DIGITS).net
    with torch.inference_mode():
        direct = float((plain(pixels).argmax(-1) == built["noisy"](pixels).argmax(-1)).float().mean())
    assert noisy.top1_agreement == pytest.approx(direct, abs=1e-4) and direct < fast.MIN_AGREEMENT
    assert model.runtime == "exact" and model.job_settings == {}


def test_a_cosine_below_the_gate_is_refused_even_when_top1_agrees(monkeypatch):
    monkeypatch.setattr(fast, "candidates", lambda device: ["fp32", "noisy"])
    real_build = fast.build
    monkeypatch.setattr(fast, "build", lambda runtime, net, *a, keep=False: Noisy(net, 0.0, 0.3) if runtime == "noisy"
                        else real_build(runtime, net, *a, keep=keep))
    model = vitkit.load(arch="vitkit_digits_patch4_32", precision="fast", batch_size=4)  # generated images
    noisy = model.fast.trial("noisy")
    assert model.fast.calibration.startswith("generated") and model.fast.runtime == "fp32"
    assert noisy.top1_agreement == 1.0 and noisy.cosine_mean < fast.MIN_COSINE
    assert "cosine" in noisy.reason and "top-1" not in noisy.reason and not noisy.accepted


def test_the_choice_is_cached_per_model_machine_and_batch_size_and_reused(digit_folder, monkeypatch, capsys):
    first = vitkit.load(DIGITS, precision="fast", batch_size=8, calibration=[str(digit_folder)])
    assert not first.fast.reused and first.fast.trial("fp32").img_s > 0
    monkeypatch.setattr(fast, "speed", lambda *a: pytest.fail("a cached choice must not be measured again"))
    monkeypatch.setattr(fast, "agreement", lambda *a: pytest.fail("a cached choice must not be measured again"))
    again = vitkit.load(DIGITS, precision="fast", batch_size=8)  # no images needed: nothing is measured
    assert again.fast.reused and again.fast.runtime == first.fast.runtime and again.fast.key == first.fast.key
    assert again.runtime == first.runtime
    # the command line reuses it too (same weights, same batch size), and says so
    assert cli.main(["classify", str(digit_folder), "--model", DIGITS, "--fast", "--batch-size", "8",
                     "--format", "jsonl", "--no-progress"]) == 0
    assert "(cached choice)" in capsys.readouterr().err
    with pytest.raises(pytest.fail.Exception):  # another batch size is another measurement
        vitkit.load(DIGITS, precision="fast", batch_size=2)


@pytest.mark.parametrize("runtime", fast.candidates(torch.device("cpu")))
def test_every_fast_runtime_keeps_the_rows_their_format_and_order(digit_folder, runtime, monkeypatch):
    from vitkit.tasks.classify import classify_paths

    paths = _images(digit_folder)
    exact = list(classify_paths(vitkit.load(DIGITS), paths, top_k=3))
    monkeypatch.setattr(fast, "candidates", lambda device: [runtime])  # the only candidate, and the gate opened:
    monkeypatch.setattr(fast, "MIN_COSINE", 0.99)  # it is chosen (INT8's cosine here is ~0.999, on the edge)
    model = vitkit.load(DIGITS, precision="fast", batch_size=8, calibration=[str(digit_folder)])
    assert model.fast.runtime == runtime, model.fast.summary()
    rows = list(classify_paths(model, paths, top_k=3))
    assert [r["path"] for r in rows] == [r["path"] for r in exact] == paths
    assert [sorted(r) for r in rows] == [sorted(r) for r in exact]
    assert [r.get("error") is not None for r in rows] == [r.get("error") is not None for r in exact]
    assert sum(r.get("error") is not None for r in rows) == 3
    good = [(r, e) for r, e in zip(rows, exact) if r.get("error") is None]
    same = sum(r["top_k"][0]["label"] == e["top_k"][0]["label"] for r, e in good)
    assert same >= 0.95 * len(good), f"{runtime}: {same}/{len(good)} top-1 equal"
    truth = sum(r["top_k"][0]["label"] == Path(r["path"]).stem.split("_")[1] for r, _ in good)
    assert truth >= 0.9 * len(good), f"{runtime}: {truth}/{len(good)} digits right"
    assert model.job_settings == ({} if model.runtime == "exact" else {"runtime": model.runtime})


def test_a_job_started_exact_is_not_resumed_in_another_precision(digit_folder, tmp_path, monkeypatch):
    """Two precisions never mix in one output: a fast runtime is part of a job's fingerprint."""
    from vitkit.batch.job import Job
    from vitkit.checkpoints.provenance import weights_digest
    from vitkit.tasks.classify import classify_to_file

    others = [r for r in fast.candidates(torch.device("cpu")) if r != "fp32"]
    if not others:
        pytest.skip("this machine has no runtime besides exact fp32 (no bf16 instructions, no onnxruntime)")
    monkeypatch.setattr(fast, "candidates", lambda device: others[:1])
    quick = vitkit.load(DIGITS, precision="fast", batch_size=8, calibration=[str(digit_folder)])
    exact = vitkit.load(DIGITS)
    paths, out = _images(digit_folder), tmp_path / "preds.jsonl"
    settings = {"task": "classify", "arch": None, "top_k": 5, "format": "jsonl"}  # as classify_to_file's
    weights = {"weights": weights_digest(exact.provenance)}  # the same file: only the runtime differs
    job = Job(paths, out, {"model": exact.source_id, "input_size": exact.spec.input_size, **weights, **settings}, 16)
    job.open()  # an exact job that was interrupted before its first part
    job.release()
    with pytest.raises(RuntimeError, match="unfinished job with other runtime"):
        classify_to_file(quick, paths, out, 5, "jsonl", 16)
    assert classify_to_file(exact, paths, out, 5, "jsonl", 16).processed == len(paths)  # the exact one resumes


def test_flop_counts_match_torchs_counter():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from vitkit.config import variant
    from vitkit.models.vit import VisionTransformer

    for name, size in (("Ti/16", 224), ("S/16", 96)):
        net = VisionTransformer(variant(name, num_classes=10)).eval()
        # the math kernel: torch's counter sees its matmuls (it does not count the fused CPU attention kernel)
        with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, 3, size, size))
        ours, theirs = model_flops(net.config, size), counter.get_total_flops()
        assert abs(ours - theirs) / theirs < 0.002, (name, ours, theirs)
    assert model_flops(variant("B/16"), 224) / 1e9 == pytest.approx(35.1, abs=0.15)


def test_the_machine_is_probed_once_and_doctor_says_what_fast_can_choose(capsys):
    found = machine()
    assert found.peaks["fp32"] > 1 and found.peak("fp32") >= found.peaks["fp32"]
    assert machine().probe_s == found.probe_s  # the second call reads the cache
    assert cli.main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["runtime"]: r for r in report["fast_candidates"]}
    assert rows["fp32"]["candidate"] and rows["fp32"]["vit_b16_limit_img_s"] > 0
    assert not rows["fp16"]["candidate"] and rows["fp16"]["why_not"] == "GPU only"
    assert rows["bf16"]["candidate"] == ("bf16" in fast.candidates(torch.device("cpu")))
    assert cli.main(["doctor"]) == 0
    assert "GEMM peaks" in capsys.readouterr().out


def test_bench_reports_the_fraction_of_this_machines_peak(capsys):
    assert cli.main(["bench", "--arch", "vit_tiny_patch16_224", "--image-size", "96", "--iters", "3",
                     "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    flops = model_flops(vitkit.load(arch="vit_tiny_patch16_224", image_size=96).config, 96)
    assert result["gflop_s"] == pytest.approx(result["img_s"] * flops / 1e9, rel=0.01)
    assert 0 < result["peak_fraction"] < 2 and result["peak_gflop_s"] == machine().peak("fp32")


@pytest.mark.slow
def test_real_deit_tiny_fast_keeps_99_percent_agreement_on_the_shared_photos(report):
    if not (DEIT / "model.safetensors").is_file() or not PHOTOS.is_dir():
        pytest.skip("the shared DeiT-Tiny weights or photos are absent (../shared)")
    photos = sorted(str(p) for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    model = vitkit.load(str(DEIT), arch="deit_tiny_patch16_224", precision="fast", batch_size=16,
                        calibration=photos)
    exact = vitkit.load(str(DEIT), arch="deit_tiny_patch16_224")
    pixels = exact.preprocess(photos)
    with torch.inference_mode():
        ref = torch.cat([exact(p) for p in pixels.split(25)])
        got = torch.cat([model(p) for p in pixels.split(25)])
    agreement = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
    report(f"--fast on {machine().cpu}: chose {model.fast.runtime}; top-1 agreement with fp32 on the 100 photos "
           f"{100 * agreement:.0f}%\n{model.fast.summary()}")
    assert len(photos) == 100 and agreement >= 0.99
    assert np.isfinite(got.numpy()).all()
