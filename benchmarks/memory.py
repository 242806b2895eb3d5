"""Peak resident memory of loading + preparing + running a model, each runtime in a fresh process.

    .venv/bin/python benchmarks/memory.py --model vit_base_patch16_224 --batch-sizes 1 16

Writes the model once (random weights) as a vitkit .safetensors and as a transformers folder, then for each
runtime starts a new Python process that imports, loads, prepares, runs `--iters` batches and prints its
peak RSS (VmHWM). The import-only row is the floor every process pays (torch, transformers, ...). vitkit
loads safetensors memory-mapped and pages out each fp32 weight once it is packed, so "loaded + packed"
should not hold two copies: compare each row with the weights' size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, torch
sys.path.insert(0, {root!r})
kind, path, bs, iters = {kind!r}, {path!r}, {bs}, {iters}
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
x = torch.randn(bs, 3, 224, 224)
if kind == "import only":
    import vitkit, transformers  # noqa: F401
    run = None
elif kind.startswith("transformers"):
    from transformers import ViTForImageClassification
    model = ViTForImageClassification.from_pretrained(path, attn_implementation="sdpa").eval()
    run = lambda: model(pixel_values=x)
else:
    import vitkit
    from vitkit.runtime import prepare
    model = vitkit.load(path)
    if kind != "vitkit unprepared fp32":
        backend, dtype = kind.split()[1:3]
        model.net = prepare(model.net, backend, dtype)
    run = lambda: model(x)
loaded = hwm()
if run is not None:
    with torch.inference_mode():
        for _ in range(iters):
            run()
print(json.dumps(dict(kind=kind, peak_after_load_mb=round(loaded), peak_mb=round(hwm()))))
"""

KINDS = ["import only", "transformers-sdpa fp32", "vitkit unprepared fp32", "vitkit eager fp32", "vitkit eager bf16"]


def measure(arch: str, batch_sizes: list[int], iters: int = 3, log=print) -> list[dict]:
    """Peak RSS of each runtime in its own fresh process, per batch size; prints a markdown table."""
    sys.path.insert(0, str(ROOT))
    import vitkit
    from vitkit.checkpoints.save import save_hf

    rows = []
    with tempfile.TemporaryDirectory(prefix="vitkit-mem-") as tmp:
        model = vitkit.load(arch=arch)
        weights = model.save(Path(tmp) / "model.safetensors", format="safetensors")
        hf = save_hf(model.net, model.spec, Path(tmp) / "hf")
        size_mb = weights.stat().st_size / 2**20
        del model
        log(f"## {arch}: peak RSS, each row a fresh process (fp32 weights {size_mb:.0f} MB)")
        columns = [f"after load+prepare MB (b{bs}) | after running MB (b{bs})" for bs in batch_sizes]
        log("| runtime | " + " | ".join(columns) + " |")
        log("|---|" + "---:|---:|" * len(batch_sizes))
        for kind in KINDS:
            cells = []
            for bs in batch_sizes:
                path = str(hf) if kind.startswith("transformers") else str(weights)
                code = CHILD.format(root=str(ROOT), kind=kind, path=path, bs=bs, iters=iters)
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                row = dict(json.loads(out.stdout.strip().splitlines()[-1]), batch_size=bs, weights_mb=round(size_mb))
                rows.append(row)
                cells += [str(row["peak_after_load_mb"]), str(row["peak_mb"])]
            log(f"| {kind} | " + " | ".join(cells) + " |")
    log("")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows = measure(args.model, args.batch_sizes, args.iters)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
