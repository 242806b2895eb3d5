"""Where the time of one inference goes: vitkit's prepared network under torch.profiler, grouped by kind of op, with
the GEMMs' achieved rate against this machine's measured peak (vitkit.runtime.machine).

    .venv/bin/python benchmarks/runtime_profile.py --model vit_base_patch16_224 --batch-size 1
    .venv/bin/python benchmarks/runtime_profile.py --model vit_base_patch16_224 --batch-size 16 --dtype bf16

Groups: linear (the packed inner products, their fused GELU / residual epilogues included), attention (SDPA), layer
norm, patch embedding (unfold + its GEMM are counted as linear), elementwise (adds, casts, copies), other. The
GEMM rate is the FLOPs of every linear layer (vitkit.runtime.machine.model_flops minus the attention products)
over the time of the linear group; the attention rate likewise.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vitkit  # noqa: E402
from vitkit.runtime import prepare  # noqa: E402
from vitkit.runtime.machine import machine, model_flops  # noqa: E402

GROUPS = (("linear", ("linear", "addmm", "mm", "matmul", "mkldnn")), ("attention", ("attention", "sdpa", "bmm")),
          ("layer norm", ("layer_norm", "native_layer_norm")),
          ("elementwise", ("add", "mul", "copy", "to", "cat", "gelu", "clone", "contiguous", "empty")))


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, keys in GROUPS:
        if any(k in lowered for k in keys):
            return group
    return "other"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args(argv)
    model = vitkit.load(arch=args.model)
    cfg, size = model.config, model.spec.input_size
    net = prepare(model.net, "eager", args.dtype, "cpu")
    x = torch.randn(args.batch_size, 3, size, size)
    with torch.inference_mode():
        for _ in range(2):
            net(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.iters):
                net(x)
    times: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.cpu_parent is None or True:  # self time: each op once, however deeply nested
            times[group_of(event.key)] += event.self_cpu_time_total / 1e6 / args.iters
    total = sum(times.values())
    tokens = (size // cfg.patch_size) ** 2 + cfg.num_prefix_tokens
    attention_flops = cfg.depth * 4 * tokens * tokens * cfg.width * args.batch_size
    linear_flops = model_flops(cfg, size) * args.batch_size - attention_flops
    here = machine()
    peak = here.peak(args.dtype)
    print(f"{args.model} {args.dtype} batch {args.batch_size} on {here.cpu} ({', '.join(here.flags)}), "
          f"{torch.get_num_threads()} threads: {total * 1000:.1f} ms per batch of op time, "
          f"{args.batch_size / total:.2f} img/s")
    print("| group | ms per batch | share | GFLOP/s | % of the measured peak |")
    print("|---|---:|---:|---:|---:|")
    for group in ("linear", "attention", "layer norm", "elementwise", "other"):
        seconds = times.get(group, 0.0)
        flops = {"linear": linear_flops, "attention": attention_flops}.get(group)
        rate = flops / seconds / 1e9 if flops and seconds else math.nan
        fraction = f"{100 * rate / peak:.0f}%" if flops and peak and seconds else "-"
        print(f"| {group} | {seconds * 1000:.1f} | {seconds / total:.0%} | "
              f"{'-' if math.isnan(rate) else f'{rate:.0f}'} | {fraction} |")
    print(f"\nmeasured peak ({args.dtype}): {peak} GFLOP/s; top ops by self time:")
    for event in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]:
        print(f"  {event.key:<50} {event.self_cpu_time_total / 1000 / args.iters:8.1f} ms  x{event.count // args.iters}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
