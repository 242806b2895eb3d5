"""argparse value types with their ranges, for every command: a value out of range is refused while the
command line is parsed (one line, exit 2), before a model is loaded or a file is written.

Try it:  vitkit classify x.jpg --arch vit_tiny_patch16_224 --batch-size 0
"""

from __future__ import annotations

import argparse
import math

from vitkit import limits


def int_in(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    parse.__name__ = f"integer in {low}..{high}"
    return parse


def float_in(low: float, high: float, low_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"{value} is outside {'(' if low_open else '['}{low}, {high}]")
        return value

    parse.__name__ = f"number in {low}..{high}"
    return parse


BATCH = int_in(1, limits.MAX_BATCH)
WORKERS = int_in(0, limits.MAX_WORKERS)
CHUNK = int_in(1, 10_000_000)
PIXELS = int_in(1, 2**40)
TOP_K = int_in(1, 1_000_000)
IMAGE_SIZE = int_in(*limits.INPUT_SIZE)
COUNT = int_in(1, 1_000_000_000)  # epochs, iterations, results, samples: anything that counts from one
NON_NEGATIVE = int_in(0, 1_000_000_000)
PORT = int_in(0, 65535)
SECONDS = float_in(0.0, 86_400.0, low_open=True)
FRACTION = float_in(0.0, 1.0)


def load_options(args: argparse.Namespace, inputs: list[str] | None = None, batch_size: int | None = None) -> dict:
    """The flags that shape the loaded model (--resize-mode, --backend, --dtype, --fast, --fast-images) as `vitkit.load`
    keywords. With --fast the
    candidates are checked on --fast-images, else on the first of the job's `inputs`, else on a generated set, at
    `batch_size` (default: the command's --batch-size); its choice and measurements are printed to stderr."""
    import sys

    options = {"backend": args.backend, "dtype": args.dtype, "resize_mode": getattr(args, "resize_mode", "crop")}
    if getattr(args, "fast", False):
        options.update(precision="fast", batch_size=batch_size or getattr(args, "batch_size", None) or 16,
                       calibration=args.fast_images or inputs, log=lambda line: print(line, file=sys.stderr))
    return options
