"""Training augmentation without torchvision: random resized crop, flip, TrivialAugmentWide or RandAugment,
then the same [0, 1] scaling and mean/std normalization as inference; plus batch mixup/cutmix.

Every random draw comes from the generator passed in (per sample: `LabelledImages` seeds one from
(seed, epoch, index)), never from global state. The draws follow torchvision's order and formulas
(`RandomResizedCrop.get_params`, `RandomHorizontalFlip`, `TrivialAugmentWide`, `RandAugment` on PIL
images, with a generator where torchvision reads the global one), and mixup/cutmix follows timm's `Mixup`
in batch mode, so recipes tuned with those libraries carry over.

Try it:  python -c "from PIL import Image; import torch; from vitkit.config import PreprocessSpec; \
from vitkit.train.augment import train_transform; t = train_transform(PreprocessSpec(), auto_augment='rand-m9-n2'); \
print(t(Image.new('RGB', (300, 200), 'red'), torch.Generator().manual_seed(0)).shape)"
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from vitkit.config import PreprocessSpec
from vitkit.data.decode import to_rgb
from vitkit.data.transforms import RESAMPLE, _normalize, eval_region, eval_view, preprocess

# op name -> (magnitudes over the bins, or None when the op has none; signed: a random sign is drawn)
OpSpace = dict[str, tuple[tuple[float, ...] | None, bool]]

OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
       "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")  # torchvision's order


# -- the op tables (torchvision's `_augmentation_space`, same float32 values) -------------------------------
@lru_cache(maxsize=8)
def trivial_augment_space(num_bins: int = 31) -> OpSpace:
    """TrivialAugmentWide's magnitudes (torchvision): a bin is drawn per image."""
    return _space(num_bins, shear=0.99, translate_x=32.0, translate_y=32.0, rotate=135.0, enhance=0.99,
                  posterize_steps=6)


@lru_cache(maxsize=64)
def rand_augment_space(num_bins: int, width: int, height: int) -> OpSpace:
    """RandAugment's magnitudes (torchvision) for an image of `width` x `height`."""
    return _space(num_bins, shear=0.3, translate_x=150.0 / 331.0 * width, translate_y=150.0 / 331.0 * height,
                  rotate=30.0, enhance=0.9, posterize_steps=4)


def _space(bins: int, shear: float, translate_x: float, translate_y: float, rotate: float, enhance: float,
           posterize_steps: int) -> OpSpace:
    def linspace(low: float, high: float) -> tuple[float, ...]:
        return tuple(float(v) for v in torch.linspace(low, high, bins))  # float32 steps, as torchvision

    posterize = tuple(float(v) for v in (8 - (torch.arange(bins) / ((bins - 1) / posterize_steps)).round().int()))
    return {
        "Identity": (None, False),
        "ShearX": (linspace(0.0, shear), True),
        "ShearY": (linspace(0.0, shear), True),
        "TranslateX": (linspace(0.0, translate_x), True),
        "TranslateY": (linspace(0.0, translate_y), True),
        "Rotate": (linspace(0.0, rotate), True),
        "Brightness": (linspace(0.0, enhance), True),
        "Color": (linspace(0.0, enhance), True),
        "Contrast": (linspace(0.0, enhance), True),
        "Sharpness": (linspace(0.0, enhance), True),
        "Posterize": (posterize, False),
        "Solarize": (linspace(255.0, 0.0), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
    }


# -- the ops (torchvision's `_apply_op` on PIL images) -----------------------------------------------------
def apply_op(image: Image.Image, name: str, magnitude: float, interpolation: str = "nearest",
             fill: tuple[int, ...] | int | None = None) -> Image.Image:
    """One augmentation op on an RGB image, with torchvision's geometry: shears about the top-left corner
    (the official AutoAugment matrix (1, m, 0, 0, 1, 0)), translations by int(magnitude) pixels, rotation
    in degrees counter-clockwise about the centre, uncovered pixels `fill` (black by default)."""
    resample = RESAMPLE[interpolation]
    fillcolor = _fill(fill, image)
    if name == "Identity":
        return image
    if name == "ShearX":
        return _affine(image, [0.0, 0.0], [math.degrees(math.atan(magnitude)), 0.0], (0.0, 0.0), resample, fillcolor)
    if name == "ShearY":
        return _affine(image, [0.0, 0.0], [0.0, math.degrees(math.atan(magnitude))], (0.0, 0.0), resample, fillcolor)
    if name == "TranslateX":
        return _affine(image, [int(magnitude), 0], [0.0, 0.0], None, resample, fillcolor)
    if name == "TranslateY":
        return _affine(image, [0, int(magnitude)], [0.0, 0.0], None, resample, fillcolor)
    if name == "Rotate":
        return image.rotate(magnitude, resample, False, None, fillcolor=fillcolor)
    if name == "Brightness":
        return ImageEnhance.Brightness(image).enhance(1.0 + magnitude)
    if name == "Color":
        return ImageEnhance.Color(image).enhance(1.0 + magnitude)
    if name == "Contrast":
        return ImageEnhance.Contrast(image).enhance(1.0 + magnitude)
    if name == "Sharpness":
        return ImageEnhance.Sharpness(image).enhance(1.0 + magnitude)
    if name == "Posterize":
        return ImageOps.posterize(image, int(magnitude))
    if name == "Solarize":
        return ImageOps.solarize(image, magnitude)
    if name == "AutoContrast":
        return ImageOps.autocontrast(image)
    if name == "Equalize":
        return ImageOps.equalize(image)
    raise ValueError(f"unknown augmentation op {name!r}: expected one of {', '.join(OPS)}")


def _fill(fill, image: Image.Image):
    bands = len(image.getbands())
    fill = 0 if fill is None else fill
    if isinstance(fill, (int, float)):
        return tuple([fill] * bands) if bands > 1 else fill
    if len(fill) != bands:
        raise ValueError(f"fill has {len(fill)} values for an image with {bands} bands")
    return tuple(fill)


def _affine(image, translate, shear, center, resample, fillcolor) -> Image.Image:
    """torchvision `F.affine` on a PIL image (angle 0, scale 1): PIL takes the inverse matrix."""
    if center is None:
        center = (image.width * 0.5, image.height * 0.5)
    matrix = _inverse_affine_matrix(center, 0.0, translate, 1.0, shear)
    return image.transform(image.size, Image.Transform.AFFINE, matrix, resample, fillcolor=fillcolor)


def _inverse_affine_matrix(center, angle, translate, scale, shear) -> list[float]:
    """torchvision `_get_inverse_affine_matrix`: M^-1 = C * RSS^-1 * C^-1 * T^-1, where RSS is rotation,
    scale and shear about the origin, C the move to `center` and T the translation."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    matrix = [x / scale for x in (d, -b, 0.0, -c, a, 0.0)]  # inverse of [[a, b], [c, d]] (det 1)
    matrix[2] += matrix[0] * (-cx - tx) + matrix[1] * (-cy - ty)
    matrix[5] += matrix[3] * (-cx - tx) + matrix[4] * (-cy - ty)
    matrix[2] += cx
    matrix[5] += cy
    return matrix


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (1,), generator=generator).item())


def trivial_augment(image: Image.Image, generator: torch.Generator, num_bins: int = 31,
                    interpolation: str = "nearest", fill=None) -> Image.Image:
    """torchvision `TrivialAugmentWide`: one op, uniformly, at a uniformly drawn magnitude bin."""
    space = trivial_augment_space(num_bins)
    name = OPS[_randint(len(OPS), generator)]
    magnitudes, signed = space[name]
    magnitude = magnitudes[_randint(len(magnitudes), generator)] if magnitudes else 0.0
    if signed and _randint(2, generator):
        magnitude *= -1.0
    return apply_op(image, name, magnitude, interpolation, fill)


def rand_augment(image: Image.Image, generator: torch.Generator, num_ops: int = 2, magnitude: int = 9,
                 num_bins: int = 31, interpolation: str = "nearest", fill=None) -> Image.Image:
    """torchvision `RandAugment`: `num_ops` ops drawn uniformly (with repetition), all at bin `magnitude`."""
    for _ in range(num_ops):
        space = rand_augment_space(num_bins, image.width, image.height)
        name = OPS[_randint(len(OPS), generator)]
        magnitudes, signed = space[name]
        value = magnitudes[magnitude] if magnitudes else 0.0
        if signed and _randint(2, generator):
            value *= -1.0
        image = apply_op(image, name, value, interpolation, fill)
    return image


def parse_auto_augment(name: str | None) -> tuple[str, int, int] | None:
    """None/"none" -> None; "trivial" -> ("trivial", 0, 0); "rand" or "rand-m9-n2" (any order, either
    part optional; defaults m9, n2) -> ("rand", magnitude, num_ops)."""
    if name is None or name.lower() in ("none", ""):
        return None
    kind, *parts = name.lower().split("-")
    if kind == "trivial" and not parts:
        return ("trivial", 0, 0)
    if kind == "rand":
        settings = {"m": 9, "n": 2}
        for part in parts:
            match = re.fullmatch(r"([mn])(\d+)", part)
            if not match:
                raise ValueError(f"auto_augment {name!r}: cannot read {part!r} (expected e.g. 'rand-m9-n2')")
            settings[match[1]] = int(match[2])
        return ("rand", settings["m"], settings["n"])
    raise ValueError(f"unknown auto_augment {name!r}: expected 'trivial', 'rand', 'rand-m9-n2' or None")


# -- random resized crop (torchvision's `RandomResizedCrop.get_params`) ------------------------------------
def random_resized_crop_params(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                               generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width): 10 tries at a random area fraction in `scale` and a
    log-uniform aspect ratio in `ratio` that fit the image, else the centre crop clamped to `ratio`."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0].item(), log_ratio[1].item(),
                                                   generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# -- the transforms ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainTransform:
    """image, generator -> float32 (3, S, S). A plain object (not a closure): DataLoader workers can
    pickle it under any start method."""

    spec: PreprocessSpec
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    auto_augment: str | None = "trivial"
    aug_interpolation: str = "nearest"  # torchvision's default for the augmentation ops
    fill: tuple[int, int, int] | int | None = None
    _parsed: tuple[str, int, int] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self):
        if not (0 < self.scale[0] <= self.scale[1]):
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"ratio must be (low, high) with 0 < low <= high, got {self.ratio}")
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"hflip is a probability, got {self.hflip}")
        if self.aug_interpolation not in RESAMPLE or self.spec.interpolation not in RESAMPLE:
            raise ValueError(f"interpolation must be one of {', '.join(RESAMPLE)}")
        parsed = parse_auto_augment(self.auto_augment)
        if parsed and parsed[0] == "rand" and not 0 <= parsed[1] < 31:
            raise ValueError(f"RandAugment magnitude must be in 0..30, got {parsed[1]}")
        object.__setattr__(self, "_parsed", parsed)

    def __call__(self, image: Image.Image, generator: torch.Generator) -> torch.Tensor:
        if not isinstance(generator, torch.Generator):
            raise TypeError("the train transform needs a seeded torch.Generator (see sample_generator)")
        if image.mode != "RGB":
            image = to_rgb(image)
        image = self._crop(image, generator)
        if self.hflip > 0 and torch.rand(1, generator=generator).item() < self.hflip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        parsed = self._parsed
        if parsed and parsed[0] == "trivial":
            image = trivial_augment(image, generator, interpolation=self.aug_interpolation, fill=self.fill)
        elif parsed:
            image = rand_augment(image, generator, num_ops=parsed[2], magnitude=parsed[1],
                                 interpolation=self.aug_interpolation, fill=self.fill)
        return torch.from_numpy(_normalize(image, self.spec))

    def _crop(self, image: Image.Image, generator: torch.Generator) -> Image.Image:
        """A random crop of the eval view's region (area `scale`, aspect `ratio` times the region's own),
        resized to the input size; the whole region is exactly the eval view."""
        left, top, right, bottom = eval_region(image.width, image.height, self.spec)
        width, height = max(1, round(right - left)), max(1, round(bottom - top))
        aspect = width / height
        y, x, h, w = random_resized_crop_params(width, height, self.scale,
                                                (self.ratio[0] * aspect, self.ratio[1] * aspect), generator)
        if (h, w) == (height, width):
            return eval_view(image, self.spec)
        size = self.spec.input_size
        box = (left + x, top + y, left + x + w, top + y + h)
        return image.resize((size, size), RESAMPLE[self.spec.interpolation], box=box)


@dataclass(frozen=True)
class EvalTransform:
    """image, generator (ignored) -> `vitkit.data.transforms.preprocess(image, spec)`."""

    spec: PreprocessSpec

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        return preprocess(image, self.spec)


def train_transform(spec: PreprocessSpec, scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5,
                    auto_augment: str | None = "trivial", *, aug_interpolation: str = "nearest",
                    fill: tuple[int, int, int] | int | None = None) -> TrainTransform:
    """RandomResizedCrop(spec.input_size, scale, ratio, spec.interpolation) inside the region the eval
    transform shows (ratio relative to that region's aspect) -> horizontal flip with
    probability `hflip` -> `auto_augment` ("trivial", "rand", "rand-m9-n2" or None) -> scale to [0, 1]
    and normalize with spec.mean/std exactly as inference does."""
    return TrainTransform(spec, tuple(scale), tuple(ratio), hflip, auto_augment, aug_interpolation, fill)


def eval_transform(spec: PreprocessSpec) -> EvalTransform:
    return EvalTransform(spec)


# -- mixup / cutmix (timm's `Mixup`, mode "batch") ---------------------------------------------------------
def smooth_one_hot(targets: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B,) class indices -> (B, C) float32: 1 - smoothing + smoothing / C on the class, smoothing / C elsewhere."""
    targets = _check_targets(targets, num_classes)
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    return torch.full((len(targets), num_classes), off, device=targets.device).scatter_(1, targets.view(-1, 1), on)


def mixup_cutmix(images: torch.Tensor, targets: torch.Tensor, num_classes: int, mixup_alpha: float = 1.0,
                 cutmix_alpha: float = 0.0, prob: float = 1.0, switch_prob: float = 0.5,
                 label_smoothing: float = 0.1, generator: torch.Generator | None = None, *,
                 correct_lam: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """timm `Mixup(mode="batch")`: with probability `prob`, mix the whole batch with its reverse
    (sample i with B-1-i) by one lambda ~ Beta(alpha, alpha): mixup blends pixels, cutmix pastes a box of
    area ~(1 - lambda) (lambda then recomputed from the box clipped to the image when `correct_lam`); with
    both alphas > 0, cutmix is chosen with probability `switch_prob`. Returns new (images, soft targets
    (B, C) float32, each row summing to 1); the inputs are not modified.

    Deterministic given `generator` (required): one 32-bit seed is drawn from it and the draws follow timm's
    order with a numpy RandomState (whose stream numpy keeps fixed across versions). Mixing pairs samples
    within this batch, so ranks that mix their own slices match a single process only if it mixes the same
    slices with the same generators.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError("mixup_cutmix needs a seeded torch.Generator (see vitkit.train.datasets.sample_generator)")
    state = np.random.RandomState(int(torch.randint(0, 2**32, (1,), generator=generator).item()))
    return _mix(images, targets, num_classes, mixup_alpha, cutmix_alpha, prob, switch_prob, label_smoothing,
                correct_lam, state)


def _mix(images, targets, num_classes, mixup_alpha, cutmix_alpha, prob, switch_prob, label_smoothing,
         correct_lam, state: np.random.RandomState) -> tuple[torch.Tensor, torch.Tensor]:
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("mixup_cutmix needs mixup_alpha > 0 or cutmix_alpha > 0")
    if images.ndim != 4 or len(images) != len(targets):
        raise ValueError(f"expected images (B, C, H, W) and targets (B,), got {tuple(images.shape)} and "
                         f"{tuple(targets.shape)}")
    targets = _check_targets(targets, num_classes)
    lam, use_cutmix = 1.0, False
    if state.rand() < prob:  # timm `_params_per_batch`
        if mixup_alpha > 0 and cutmix_alpha > 0:
            use_cutmix = state.rand() < switch_prob
            lam = state.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else state.beta(mixup_alpha, mixup_alpha)
        elif mixup_alpha > 0:
            lam = state.beta(mixup_alpha, mixup_alpha)
        else:
            use_cutmix = True
            lam = state.beta(cutmix_alpha, cutmix_alpha)
        lam = float(lam)
    images = images.clone()
    if lam != 1.0:
        if use_cutmix:
            (top, bottom, left, right), lam = cutmix_box(images.shape[-2:], lam, state, correct_lam)
            images[:, :, top:bottom, left:right] = images.flip(0)[:, :, top:bottom, left:right]
        else:
            images = images * lam + images.flip(0) * (1.0 - lam)
    soft = smooth_one_hot(targets, num_classes, label_smoothing)
    return images, soft * lam + soft.flip(0) * (1.0 - lam)


def cutmix_box(size: tuple[int, int], lam: float, state: np.random.RandomState,
               correct_lam: bool = True) -> tuple[tuple[int, int, int, int], float]:
    """timm `rand_bbox` + `cutmix_bbox_and_lam`: a box of sides (H, W) * sqrt(1 - lam) centred at a uniform
    pixel, clipped to the image -> ((top, bottom, left, right), lam corrected to 1 - box area / image area)."""
    height, width = int(size[0]), int(size[1])
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = state.randint(0, height), state.randint(0, width)
    top, bottom = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + (cut_h + 1) // 2, 0, height))
    left, right = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + (cut_w + 1) // 2, 0, width))
    if correct_lam:
        lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
    return (top, bottom, left, right), lam


def _check_targets(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    targets = torch.as_tensor(targets)
    if targets.ndim != 1 or targets.dtype.is_floating_point:
        raise ValueError(f"targets must be class indices of shape (B,), got {targets.dtype} {tuple(targets.shape)}")
    targets = targets.long()
    if len(targets) and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(f"targets must lie in 0..{num_classes - 1}, got {targets.min().item()}..{targets.max().item()}")
    return targets
