"""decode_image on awkward inputs: each gives a correct RGB image or an ImageDecodeError that says why.

Run:  .venv/bin/python -m pytest tests/test_decode.py -q
"""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitkit.config import PreprocessSpec
from vitkit.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, to_rgb
from vitkit.data.transforms import preprocess

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "images" / "imagenet-sample-100"
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encoded(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)  # (H, W, 3)


def a_photo_jpeg() -> bytes:
    if PHOTOS.is_dir():
        return next(PHOTOS.glob("*.JPEG")).read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    return encoded(Image.fromarray(noise), "JPEG", quality=90)


# ---- refused inputs -------------------------------------------------------------------------------


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    for source in (path, str(path), b""):
        with pytest.raises(ImageDecodeError, match=r"empty file \(0 bytes\)"):
            decode_image(source)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not the pixels you are looking for\n" * 20)
    with pytest.raises(ImageDecodeError, match="not an image: cannot identify image file") as raised:
        decode_image(path)
    assert raised.value.__cause__ is not None  # PIL's own error stays attached


def test_truncated_jpeg_is_an_error(tmp_path):
    # Pillow could decode the first half and fill the rest with grey (LOAD_TRUNCATED_IMAGES); a model
    # would then classify half a photo without anyone knowing. vitkit refuses instead.
    data = a_photo_jpeg()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated or corrupt image data") as raised:
        decode_image(path)
    assert isinstance(raised.value.__cause__, OSError)
    assert isinstance(raised.value, ValueError)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature, an IHDR chunk claiming width x height (1-bit grey) and IEND: no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_huge_image_is_refused_before_decoding(tmp_path):
    # 20000 x 20000 is also past Pillow's own bomb limit: the message must still be vitkit's
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(20000, 20000))
    with pytest.raises(ImageDecodeError) as raised:
        decode_image(path)
    message = str(raised.value)
    assert "image too large: 20000x20000 = 400.0 MP" in message
    assert f"{DEFAULT_MAX_PIXELS / 1e6:.1f} MP limit" in message
    assert "max_pixels" in message


def test_max_pixels_is_the_limit():
    data = encoded(Image.new("RGB", (100, 50), RED), "PNG")
    with pytest.raises(ImageDecodeError, match="100x50"):
        decode_image(data, max_pixels=4999)
    assert decode_image(data, max_pixels=5000).size == (100, 50)


def test_file_system_errors_are_not_decode_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        decode_image(tmp_path / "missing.jpg")
    with pytest.raises(TypeError, match="path or bytes"):
        decode_image(np.zeros((2, 2, 3), np.uint8))


# ---- decoded inputs -------------------------------------------------------------------------------


def test_one_pixel_image_decodes_and_preprocesses():
    image = decode_image(encoded(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"))
    assert image.mode == "RGB" and image.size == (1, 1)
    spec = PreprocessSpec()
    for mode in ("shortest", "exact"):
        tensor = preprocess(image, PreprocessSpec(resize_mode=mode))
        assert tensor.shape == (3, 224, 224)
        expected = (np.array([10, 20, 30]) / 255 - np.array(spec.mean)) / np.array(spec.std)
        assert np.allclose(tensor.numpy(), expected[:, None, None], atol=1e-5)


def test_sixteen_bit_png_is_scaled_not_clipped():
    grey16 = np.array([[0, 257, 32768], [65535, 25700, 1000]], dtype=np.uint16)
    image = decode_image(encoded(Image.fromarray(grey16), "PNG"))
    assert image.mode == "RGB"
    expected = np.array([[0, 1, 128], [255, 100, 4]])
    assert (pixels(image) == expected[:, :, None]).all()


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    data = encoded(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    image = decode_image(data)
    assert image.mode == "RGB"
    assert np.abs(pixels(image) - RED).max() <= 8  # JPEG is lossy


def test_palette_png_transparent_pixels_become_white():
    palette_image = Image.new("P", (4, 2), 0)
    palette_image.putpalette([*RED, *BLUE])
    palette_image.paste(1, (2, 0, 4, 2))  # right half: index 1, blue
    data = encoded(palette_image, "PNG", transparency=0)  # index 0 (red) is transparent
    image = decode_image(data)
    assert (pixels(image)[:, :2] == WHITE).all()
    assert (pixels(image)[:, 2:] == BLUE).all()


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, (0, 255, 0), BLUE)]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert (pixels(decode_image(data)) == RED).all()


def test_exif_orientation_is_applied():
    # stored 40 wide x 20 high, left half red, right half blue; orientation 6 = "rotate 90 clockwise
    # to display", which puts the stored left half on top
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image = decode_image(encoded(stored, "JPEG", quality=95, exif=exif))
    assert image.size == (20, 40)
    assert np.abs(pixels(image)[5, 10] - RED).max() <= 8
    assert np.abs(pixels(image)[35, 10] - BLUE).max() <= 8


def test_greyscale_jpeg_gives_three_equal_channels():
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))  # (16, 64)
    data = encoded(Image.fromarray(ramp), "JPEG", quality=95)
    image = decode_image(data)
    rgb = pixels(image)
    assert image.mode == "RGB"
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert (rgb[..., 0] == np.asarray(Image.open(io.BytesIO(data)))).all()


def test_draft_decodes_large_jpegs_reduced():
    data = encoded(Image.new("RGB", (2000, 1600), RED), "JPEG")
    assert decode_image(data).size == (2000, 1600)
    # largest reduction (1/2, 1/4, 1/8) keeping both sides >= 256: 1/4
    assert decode_image(data, draft_size=256).size == (500, 400)
    png = encoded(Image.new("RGB", (600, 500), RED), "PNG")
    assert decode_image(png, draft_size=256).size == (600, 500)  # only JPEG decoders can draft


# ---- every PIL mode to RGB ------------------------------------------------------------------------

HALF_RED = (255, 127, 127)  # red at alpha 128/255 over white

MODE_CASES = {
    # name: (image, expected RGB of each pixel, tolerance)
    "1": (Image.fromarray(np.array([[False, True]])), [(0, 0, 0), WHITE], 0),
    "L": (Image.fromarray(np.array([[0, 77]], np.uint8)), [(0, 0, 0), (77, 77, 77)], 0),
    "LA": (Image.fromarray(np.array([[[50, 0], [50, 255]]], np.uint8), "LA"), [WHITE, (50, 50, 50)], 0),
    "P": (Image.new("P", (1, 1), 0), [(0, 0, 0)], 0),
    "RGBA": (Image.fromarray(np.array([[[255, 0, 0, 128], [0, 0, 255, 0]]], np.uint8)), [HALF_RED, WHITE], 1),
    "CMYK": (Image.new("CMYK", (1, 1), (0, 255, 255, 0)), [RED], 0),
    "YCbCr": (Image.new("RGB", (1, 1), BLUE).convert("YCbCr"), [BLUE], 3),
    "LAB": (Image.new("RGB", (1, 1), RED).convert("LAB"), [RED], 12),  # 8-bit Lab loses a little
    "HSV": (Image.new("HSV", (1, 1), (170, 255, 255)), [BLUE], 1),
    "I;16B": (Image.fromarray(np.array([[0, 65535]], ">u2")), [(0, 0, 0), WHITE], 0),
    "I 16-bit range": (Image.fromarray(np.array([[0, 32768, 65535]], np.int32)), [(0,) * 3, (128,) * 3, WHITE], 0),
    "I beyond 16 bits": (Image.fromarray(np.array([[-1000, 0, 1000]], np.int32)), [(0,) * 3, (128,) * 3, WHITE], 0),
    "F 0..1": (Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)), [(0,) * 3, (128,) * 3, WHITE], 0),
    "F beyond 0..1": (Image.fromarray(np.array([[-2.0, 3.0, 8.0]], np.float32)), [(0,) * 3, (128,) * 3, WHITE], 0),
}


@pytest.mark.parametrize("case", MODE_CASES)
def test_to_rgb_converts_every_mode(case):
    image, expected, tolerance = MODE_CASES[case]
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    assert np.abs(pixels(rgb).reshape(-1, 3) - np.array(expected)).max() <= tolerance


def test_palette_with_transparency_mode_pa():
    palette_alpha = Image.new("PA", (2, 1))
    palette_alpha.putpalette([*RED, *BLUE])
    palette_alpha.putpixel((0, 0), (0, 255))
    palette_alpha.putpixel((1, 0), (1, 0))
    assert pixels(to_rgb(palette_alpha)).reshape(-1, 3).tolist() == [list(RED), list(WHITE)]
