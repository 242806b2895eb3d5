"""Training throughput: vitkit's trainer step against a plain transformers training loop, same model, same
weights, same batch, same precision.

    .venv/bin/python benchmarks/train_speed.py                               # ViT-S/16, 224 px, batch 16
    .venv/bin/python benchmarks/train_speed.py --arch vit_tiny_patch16_224 --batch-size 32 --rounds 9

vitkit: `Trainer._step` itself (autocast, forward, cross entropy, backward, gradient clipping
at norm 1, AdamW with vitkit's parameter groups, zero_grad) on a Trainer built from a random-weight model
folder, exactly as `vitkit finetune` runs it (data loading left out: both sides get the same random batch).
transformers: `ViTForImageClassification.from_pretrained` on the trainer's own network written by
`save_hf` (attn_implementation="sdpa"), in the loop everyone writes: autocast, `model(pixel_values,
labels=...)`, `loss.backward()`, `clip_grad_norm_(1.0)`, `torch.optim.AdamW(model.parameters())` with the
same lr and weight decay, `zero_grad(set_to_none=True)`. Label smoothing is off on both sides.

Timing: both start from the same weights and take `--warmup` untimed steps; then each round (after waiting
until other processes leave the CPU quiet, vitkit.tasks.bench.wait_quiet) times one step of each, in
alternating order. img/s = batch / median step time; the ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vitkit.checkpoints.save import save_hf  # noqa: E402
from vitkit.models.registry import arch as get_arch  # noqa: E402
from vitkit.models.vit import VisionTransformer  # noqa: E402
from vitkit.runtime.measure import wait_quiet  # noqa: E402
from vitkit.train.config import TrainConfig  # noqa: E402
from vitkit.train.trainer import Trainer  # noqa: E402

NUM_CLASSES = 10
LR, WEIGHT_DECAY, CLIP = 1e-3, 0.05, 1.0


def make_trainer(arch: str, batch: int, amp: str, work: Path) -> Trainer:
    """A Trainer on a tiny class-folder dataset (only to satisfy its constructor) and a random model folder."""
    row = get_arch(arch)
    torch.manual_seed(0)
    net = VisionTransformer(row.config.replace(num_classes=NUM_CLASSES, labels=()))
    save_hf(net, row.preprocess, work / "init")
    rng = np.random.default_rng(0)
    for i in range(max(batch, NUM_CLASSES)):  # every class present: the head has NUM_CLASSES outputs
        folder = work / "data" / f"c{i % NUM_CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = TrainConfig(data=str(work / "data"), out=str(work / f"run-{amp}"), model=str(work / "init"),
                      epochs=1, batch_size=batch, lr=LR, weight_decay=WEIGHT_DECAY, clip_grad=CLIP, amp=amp,
                      label_smoothing=0.0, val_split=0.0, workers=0, device="cpu")
    return Trainer(cfg)


def make_transformers(trainer: Trainer, work: Path, amp: str):
    from transformers import ViTForImageClassification

    folder = save_hf(trainer.net, trainer.spec, work / f"hf-{amp}")
    model = ViTForImageClassification.from_pretrained(folder, attn_implementation="sdpa").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if amp == "bf16" else contextlib.nullcontext

    def step(pixels: torch.Tensor, targets: torch.Tensor) -> float:
        with autocast():
            loss = model(pixel_values=pixels, labels=targets).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return model, step


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(arch: str, batch: int, amp: str, warmup: int, rounds: int, quiet: float) -> dict:
    size = get_arch(arch).config.image_size
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        work = Path(tmp)
        trainer = make_trainer(arch, batch, amp, work)
        _, hf_step = make_transformers(trainer, work, amp)
        trainer.model.train()
        g = torch.Generator().manual_seed(0)
        pixels = torch.randn(batch, 3, size, size, generator=g)
        assert len(trainer.labels) == NUM_CLASSES
        targets = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
        ours = lambda: trainer._step([(pixels, targets)])  # noqa: E731
        theirs = lambda: hf_step(pixels, targets)  # noqa: E731
        first = (ours(), theirs())  # same weights, same batch: the first losses agree
        for _ in range(warmup - 1):
            ours(), theirs()
        t_ours, t_theirs, ratios, waited = [], [], [], 0.0
        for r in range(rounds):
            waited += wait_quiet(quiet, max_wait_s=60)["waited_s"] if quiet else 0.0
            if r % 2:
                b, a = timed(theirs), timed(ours)
            else:
                a, b = timed(ours), timed(theirs)
            t_ours.append(a)
            t_theirs.append(b)
            ratios.append(b / a)
    return {"amp": amp, "vitkit": batch / statistics.median(t_ours),
            "transformers": batch / statistics.median(t_theirs), "ratio": statistics.median(ratios),
            "ratio_range": (min(ratios), max(ratios)),
            "first_loss": first, "waited_s": waited}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vit_small_patch16_224")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", nargs="+", choices=("none", "bf16"), default=["none", "bf16"],
                        help="none: fp32; bf16: bf16 autocast (both sides)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each (at least 1)")
    parser.add_argument("--rounds", type=int, default=7, help="timed steps of each")
    parser.add_argument("--quiet", type=float, default=0.25,
                        help="before each round wait until other processes use less than this many cores (0: don't)")
    args = parser.parse_args(argv)
    import transformers

    print(f"training img/s, {args.arch}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
    rows = []
    for amp in args.precision:
        row = run(args.arch, args.batch_size, amp, max(1, args.warmup), args.rounds, args.quiet)
        rows.append(row)
        name = "fp32" if amp == "none" else "bf16 autocast"
        print(f"  {name}: first losses (same weights, same batch) vitkit {row['first_loss'][0]:.4f}, transformers "
              f"{row['first_loss'][1]:.4f}; waited {row['waited_s']:.0f} s for a quiet CPU", flush=True)
    print(f"\n{'precision':<15}{'vitkit img/s':>14}{'transformers img/s':>20}{'vitkit / transformers':>24}"
          f"{'(min-max of rounds)':>21}")
    for row in rows:
        name = "fp32" if row["amp"] == "none" else "bf16 autocast"
        low, high = row["ratio_range"]
        print(f"{name:<15}{row['vitkit']:>14.2f}{row['transformers']:>20.2f}{row['ratio']:>23.2f}x"
              f"{f'({low:.2f}-{high:.2f})':>21}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
