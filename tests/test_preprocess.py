"""vitkit's preprocessing equals the reference pipelines on 100 real photos, within 1e-5.

  "exact" mode     transformers' ViT / BEiT / DeiT image processors (their PIL backend, the one
                   transformers 5 uses when torchvision is absent)
  "shortest" mode  timm's eval transform (Resize(shorter side) -> CenterCrop -> ToTensor -> Normalize),
                   rewritten below with PIL + numpy because timm's transforms need torchvision

Run:  .venv/bin/python -m pytest tests/test_preprocess.py -q
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.config import HALF, IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec
from vitkit.data.decode import decode_image
from vitkit.data.transforms import preprocess, preprocess_batch

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "images" / "imagenet-sample-100"
if not PHOTOS.is_dir():
    pytest.skip(f"real photos not found at {PHOTOS} (../shared is absent in a fresh clone)", allow_module_level=True)

pytest.importorskip("transformers")
from transformers.models.beit.image_processing_pil_beit import BeitImageProcessorPil  # noqa: E402
from transformers.models.deit.image_processing_pil_deit import DeiTImageProcessorPil  # noqa: E402
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil  # noqa: E402

TOLERANCE = 1e-5
EXTRA_CASE_STRIDE = 4  # extra sizes and settings run on every 4th photo to keep the file fast
BILINEAR, BICUBIC = Image.Resampling.BILINEAR, Image.Resampling.BICUBIC


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [decode_image(path) for path in sorted(PHOTOS.glob("*.JPEG"))]


def hf_square(side: int) -> dict:
    return {"height": side, "width": side}


# name -> (transformers processor, the PreprocessSpec that must reproduce it)
TRANSFORMERS_CASES = {
    # google/vit-base-patch16-224: resize straight to 224, bilinear, mean = std = 0.5
    "vit-224": lambda: (
        ViTImageProcessorPil(size=hf_square(224), resample=BILINEAR, image_mean=HALF, image_std=HALF),
        PreprocessSpec(224, 1.0, "exact", "bilinear", HALF, HALF),
    ),
    # microsoft/beit-base-patch16-224's preprocessor_config.json: size 224, resample 2 (bilinear),
    # do_center_crop false, mean = std = 0.5
    "beit-224-hub": lambda: (
        BeitImageProcessorPil(
            size=hf_square(224), resample=BILINEAR, do_center_crop=False, image_mean=HALF, image_std=HALF
        ),
        PreprocessSpec(224, 1.0, "exact", "bilinear", HALF, HALF),
    ),
    # facebook/deit-*-patch16-224: 256 x 256 bicubic, centre crop 224, ImageNet mean/std
    "deit-224": lambda: (
        DeiTImageProcessorPil(
            size=hf_square(256), crop_size=hf_square(224), resample=BICUBIC,
            image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
        ),
        PreprocessSpec(224, 0.875, "exact", "bicubic"),
    ),
}

EXTRA_TRANSFORMERS_CASES = {
    # BeitImageProcessorPil's own class defaults (bicubic, 224, no crop, 0.5): what a config without
    # "resample" gets
    "beit-224-class-defaults": lambda: (
        BeitImageProcessorPil(),
        PreprocessSpec(224, 1.0, "exact", "bicubic", HALF, HALF),
    ),
    # non-native sizes: ViT straight to 384; DeiT's recipe at 288 (329 -> crop 288)
    "vit-384": lambda: (
        ViTImageProcessorPil(size=hf_square(384), resample=BILINEAR, image_mean=HALF, image_std=HALF),
        PreprocessSpec(384, 1.0, "exact", "bilinear", HALF, HALF),
    ),
    "deit-288": lambda: (
        DeiTImageProcessorPil(
            size=hf_square(329), crop_size=hf_square(288), resample=BICUBIC,
            image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
        ),
        PreprocessSpec(288, 0.875, "exact", "bicubic"),
    ),
    # crop larger than the resize (crop_pct > 1): zero padding, 39 rows split 20 before and 19 after
    "deit-pad": lambda: (
        DeiTImageProcessorPil(
            size=hf_square(185), crop_size=hf_square(224), resample=BICUBIC,
            image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
        ),
        PreprocessSpec(224, 1.21, "exact", "bicubic"),
    ),
}


@pytest.mark.parametrize("case", [*TRANSFORMERS_CASES, *EXTRA_TRANSFORMERS_CASES])
def test_exact_mode_matches_transformers(photos, case):
    if case in TRANSFORMERS_CASES:
        processor, spec = TRANSFORMERS_CASES[case]()
    else:
        processor, spec = EXTRA_TRANSFORMERS_CASES[case]()
        photos = photos[::EXTRA_CASE_STRIDE]
    expected = processor(photos, return_tensors="np")["pixel_values"]
    actual = preprocess_batch(photos, spec)
    assert actual.shape == expected.shape == (len(photos), 3, spec.input_size, spec.input_size)
    assert actual.dtype == torch.float32
    assert np.abs(actual.numpy() - expected).max() <= TOLERANCE


def timm_eval_reference(image: Image.Image, input_size: int, crop_pct: float, resample, mean, std) -> np.ndarray:
    """timm `transforms_imagenet_eval` (crop_mode "center") on a PIL image, step by step:
    torchvision Resize(floor(input_size / crop_pct)) -> CenterCrop(input_size) -> ToTensor -> Normalize."""
    scale = math.floor(input_size / crop_pct)
    width, height = image.size
    if width <= height:
        new_size = (scale, int(scale * height / width))
    else:
        new_size = (int(scale * width / height), scale)
    pixels = np.asarray(image.resize(new_size, resample))  # (H, W, 3) uint8

    # CenterCrop: a side shorter than the crop gets (crop - side) // 2 zeros before, the rest after
    pad_h, pad_w = max(input_size - pixels.shape[0], 0), max(input_size - pixels.shape[1], 0)
    pixels = np.pad(pixels, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
    top = int(round((pixels.shape[0] - input_size) / 2.0))
    left = int(round((pixels.shape[1] - input_size) / 2.0))
    pixels = pixels[top : top + input_size, left : left + input_size]

    # ToTensor divides in float32; vitkit follows transformers (float64 rescale, then float32): the two
    # differ by at most one float32 ulp, far below the tolerance
    tensor = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)  # (3, H, W)
    mean = np.asarray(mean, dtype=np.float32)[:, None, None]
    std = np.asarray(std, dtype=np.float32)[:, None, None]
    return (tensor - mean) / std


TIMM_CASES = [
    # (input_size, crop_pct, mean, std, every photo or every EXTRA_CASE_STRIDE-th)
    (224, 0.875, IMAGENET_MEAN, IMAGENET_STD, "all"),  # DeiT / most timm ImageNet models: 256 -> 224
    (224, 0.9, IMAGENET_MEAN, IMAGENET_STD, "all"),  # 248 -> 224
    (224, 0.875, HALF, HALF, "all"),
    (224, 0.9, HALF, HALF, "all"),  # augreg ViTs: 248 -> 224, mean = std = 0.5
    (288, 0.875, IMAGENET_MEAN, IMAGENET_STD, "some"),  # non-native sizes
    (384, 0.9, HALF, HALF, "some"),
    (224, 1.21, IMAGENET_MEAN, IMAGENET_STD, "some"),  # resize 185 < crop 224: odd zero padding
]


@pytest.mark.parametrize("input_size, crop_pct, mean, std, which", TIMM_CASES)
def test_shortest_mode_matches_timm_eval(photos, input_size, crop_pct, mean, std, which):
    if which == "some":
        photos = photos[::EXTRA_CASE_STRIDE]
    spec = PreprocessSpec(input_size, crop_pct, "shortest", "bicubic", mean, std)
    expected = np.stack([timm_eval_reference(p, input_size, crop_pct, BICUBIC, mean, std) for p in photos])
    actual = preprocess_batch(photos, spec)
    assert actual.shape == (len(photos), 3, input_size, input_size)
    assert np.abs(actual.numpy() - expected).max() <= TOLERANCE


def test_non_rgb_input_is_converted_first(photos):
    spec = PreprocessSpec()
    grey = photos[0].convert("L")
    assert torch.equal(preprocess(grey, spec), preprocess(grey.convert("RGB"), spec))


def test_empty_batch_has_batch_shape():
    assert preprocess_batch([], PreprocessSpec(input_size=384)).shape == (0, 3, 384, 384)


def test_unknown_resize_mode_is_refused(photos):
    with pytest.raises(ValueError, match="resize_mode"):
        preprocess(photos[0], PreprocessSpec(resize_mode="squash"))


def test_table_normalization_is_bit_identical_to_the_arithmetic():
    """The lookup table gives exactly transformers' steps (float64 rescale, float32 cast, float32 normalize) for
    every uint8 level of every channel, with ImageNet's, CLIP's and SigLIP's constants."""
    from vitkit.data.transforms import _normalize

    levels = np.stack(np.meshgrid(np.arange(256), np.arange(3), indexing="ij"), -1)[:, :, 0]  # (256, 3)
    pixels = np.repeat(levels[None].astype(np.uint8), 2, axis=0)  # (2, 256, 3): every level in every channel
    for mean, std in (((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                      ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
                      ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))):
        spec = PreprocessSpec(mean=mean, std=std)
        direct = ((pixels.transpose(2, 0, 1) * (1 / 255)).astype(np.float32)
                  - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
        assert np.array_equal(_normalize(Image.fromarray(pixels), spec), direct)


def test_pad_keeps_a_wide_images_far_left_object_that_crop_cuts_off():
    """A 4:1 panorama with a red disk at its far left: the checkpoint's centre crop loses it, the letterbox keeps it
    (at the position the geometry says), squash keeps it stretched; the padding is the mean colour (~0 normalised)."""
    from PIL import ImageDraw

    from vitkit.data.transforms import _letterbox_box, eval_view

    wide = Image.new("RGB", (800, 200), "white")
    ImageDraw.Draw(wide).ellipse((10, 60, 90, 140), fill=(255, 0, 0))  # centre (50, 100)
    spec = PreprocessSpec(input_size=224, crop_pct=0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def red(view: Image.Image) -> np.ndarray:
        px = np.asarray(view).astype(int)
        return (px[:, :, 0] > 200) & (px[:, :, 1] < 60) & (px[:, :, 2] < 60)  # (H, W)

    assert not red(eval_view(wide, spec.with_resize_mode("crop"))).any()
    padded = eval_view(wide, spec.with_resize_mode("pad"))
    found = red(padded)
    left, top, new_w, new_h = _letterbox_box(800, 200, 224)
    assert (left, top, new_w, new_h) == (0, 84, 224, 56)
    ys, xs = np.nonzero(found)
    assert abs(xs.mean() - 50 * 224 / 800) < 1.5 and abs(ys.mean() - (top + 100 * 56 / 200)) < 1.5
    assert red(eval_view(wide, spec.with_resize_mode("squash"))).any()
    pixels = preprocess(wide, spec.with_resize_mode("pad"))  # (3, 224, 224)
    assert pixels[:, :top].abs().max() < 0.01 and pixels[:, top + new_h:].abs().max() < 0.01  # mean-colour bands
    with pytest.raises(ValueError, match="resize mode 'fill' is not one of crop, pad, squash"):
        spec.with_resize_mode("fill")


def test_the_resize_mode_travels_into_jobs_exports_and_refuses_transformers(tmp_path):
    import vitkit
    from vitkit.batch.job import Job

    digits = str(Path(__file__).resolve().parents[1] / "vitkit" / "assets" / "digits-vit")
    padded = vitkit.load(digits, resize_mode="pad")
    assert padded.spec.resize_mode == "pad" and padded.job_settings == {"resize_mode": "pad"}
    assert vitkit.load(digits).job_settings == {}
    pytest.importorskip("onnxruntime")
    padded.save(tmp_path / "pad.onnx", format="onnx")
    assert vitkit.load(str(tmp_path / "pad.onnx")).spec.resize_mode == "pad"  # the file's own recipe
    with pytest.raises(ValueError, match="no transformers image processor"):
        padded.save(tmp_path / "hf")
    wide = Image.new("RGB", (128, 32), "white")
    assert torch.equal(padded.preprocess(wide), vitkit.load(str(tmp_path / "pad.onnx")).preprocess(wide))
    assert Job(["a"], tmp_path / "o.jsonl", padded.job_settings, 1).fingerprint["resize_mode"] == "pad"
