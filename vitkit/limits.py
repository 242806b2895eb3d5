"""Every bound vitkit puts on what comes from outside, in one place: images, configs, checkpoints, settings.
Each check raises a one-line ValueError that names the value, its source and the allowed range, before any
memory is allocated for it. The README's "Limits and guarantees" lists these.

Try it:  python -c "from vitkit.limits import check_int; check_int('depth', 10**9, 1, 256, 'config.json')"
"""

from __future__ import annotations

import math

# -- images --------------------------------------------------------------------------------------------------
MAX_PIXELS = 64_000_000  # decoded width x height, checked from the header before any pixel is decoded
STRIP_FACTOR = 16  # a resize intermediate larger than this many model inputs is cropped before it is resized
# Pillow formats that vitkit opens: ICO and ICNS decode a whole embedded PNG inside Image.open (before its
# size can be checked), EPS runs Ghostscript, and the rest (PSD, TGA, PCX, FITS, ...) are not how photos
# arrive. MPO (phone JPEGs) opens through the JPEG plugin.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF", "JPEG2000")

# -- networks ------------------------------------------------------------------------------------------------
CONFIG_INTS = {  # field -> (lowest, highest)
    "image_size": (1, 4096), "patch_size": (1, 1024), "in_chans": (1, 16), "width": (1, 16384),
    "depth": (1, 256), "heads": (1, 1024), "mlp_dim": (1, 131072), "num_classes": (0, 1_000_000),
    "pre_logits_dim": (0, 16384), "proj_dim": (0, 16384), "reg_tokens": (0, 64), "rope_ref_grid": (0, 1024),
}
TEXT_INTS = {  # a text tower's fields -> (lowest, highest)
    "vocab_size": (1, 1_000_000), "context_length": (1, 4096), "width": (1, 16384), "depth": (1, 256),
    "heads": (1, 1024), "mlp_dim": (1, 131072), "eos_id": (0, 1_000_000), "proj_dim": (0, 16384),
}
MAX_TEXTS = 100_000  # texts in one request or label set
MAX_TEXT_CHARS = 10_000  # one text, before tokenizing (what the model reads is cut to its context length anyway)
MAX_TOKENS = 16384  # patches per image (a 2048-px image at patch 16): attention is quadratic in them
MAX_PARAMETERS = 25_000_000_000  # ViT-22B fits; a config asking for more is a mistake or an attack
INPUT_SIZE = (1, 4096)

# -- checkpoints ---------------------------------------------------------------------------------------------
MAX_ARRAY_BYTES = 16 * 2**30  # one tensor
MAX_INFLATION = 50  # a compressed (.npz) member may hold at most this many times its stored size (zip bomb)

# -- batch jobs ----------------------------------------------------------------------------------------------
MAX_WORKERS = 64
MAX_BATCH = 4096


def check_int(name: str, value, low: int, high: int, where: str = "") -> int:
    """`value` as an int in [low, high] (bools and floats refused), else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{_where(where)}{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{_where(where)}{name} {value} is outside {low}..{high}")
    return value


def check_float(name: str, value, low: float, high: float, where: str = "", low_open: bool = False) -> float:
    """`value` as a finite number in [low, high] ((low, high] with low_open), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{_where(where)}{name} must be a finite number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ValueError(f"{_where(where)}{name} {value} is outside {bracket}{low}, {high}]")
    return float(value)


def check_tokens(input_size: int, patch_size: int, where: str = "") -> None:
    tokens = (input_size // patch_size) ** 2
    if tokens > MAX_TOKENS:
        raise ValueError(f"{_where(where)}{input_size} px at patch {patch_size} is {tokens} tokens per image, more "
                         f"than {MAX_TOKENS} (attention grows with their square)")


def _where(where: str) -> str:
    return f"{where}: " if where else ""
