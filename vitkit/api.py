"""The Python API: `vitkit.load(...)` returns a `Model` that preprocesses, predicts and saves.

    import vitkit
    model = vitkit.load("../shared/weights/deit-tiny-patch16-224/model.safetensors", arch="deit_tiny_patch16_224")
    model.classify(["../shared/images/imagenet-sample-100/n01440764_tench.JPEG"], top_k=3)

Try it:  python -m pytest tests/test_api.py -q
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from vitkit.checkpoints.convert import Loaded, load_network
from vitkit.checkpoints.save import save
from vitkit.config import PreprocessSpec, ViTConfig
from vitkit.data.decode import decode_image
from vitkit.data.transforms import preprocess_batch
from vitkit.limits import check_tokens
from vitkit.choices import POOLS, PRECISIONS, VECTOR_POOLS  # noqa: F401  (VECTOR_POOLS: re-exported)

ImageInput = Image.Image | str | Path | bytes


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    score: float  # softmax probability (zero-shot SigLIP: its sigmoid probability)

    def to_dict(self) -> dict:
        return {"index": self.index, "label": self.label, "score": self.score}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} was asked for, but this PyTorch build sees no CUDA GPU")
    return torch.device(device)


class Model:
    """A loaded network with its preprocessing, on one device, in inference mode."""

    def __init__(self, loaded: Loaded, device: str | None = "cpu", image_size: int | None = None,
                 backend: str | None = None, dtype: str | None = None, precision: str = "exact",
                 batch_size: int = 16, calibration: list[ImageInput] | None = None, log=None):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
        if precision == "fast" and (backend not in (None, "auto") or dtype not in (None, "auto")):
            raise ValueError("precision 'fast' (--fast) chooses the backend and dtype itself: drop --backend/--dtype")
        self.device = resolve_device(device)
        self.net = loaded.net.to(self.device).eval()
        self.spec: PreprocessSpec = loaded.preprocess.at_size(image_size or loaded.preprocess.input_size)
        check_tokens(self.spec.input_size, loaded.net.config.patch_size, "--image-size")
        self.source = loaded.source
        self.layout = loaded.layout
        self.fast = None  # precision "fast": the FastChoice (what was chosen, and what every candidate measured)
        if precision == "fast" and self.layout != "onnx":
            from vitkit.runtime.fast import choose

            say = log or (lambda line: None)
            self.net, self.fast = choose(self.net, self.spec, self.device, batch_size, self.default_pool,
                                         lambda: self._calibration(calibration), self.source, say)
            say(self.fast.summary())
        elif backend or dtype:  # a fast inference network (vitkit.runtime); without them it stays trainable
            from vitkit.runtime import inference_network

            self.net = inference_network(self.net, self.spec, backend or "auto", dtype or "auto", self.device,
                                         loaded.source)

    def _calibration(self, images: list[ImageInput] | None) -> tuple[torch.Tensor, str]:
        """Pixels to check a fast runtime on: the first of `images` (files, folders, globs, PIL, bytes) that decode,
        else a generated set."""
        from vitkit.data.calibration import CALIBRATION_KIND, calibration_images
        from vitkit.data.sources import expand_inputs
        from vitkit.runtime.fast import CALIBRATION_INPUTS

        given = []
        for image in images or []:
            given.extend(expand_inputs([str(image)]) if isinstance(image, (str, Path)) else [image])
        decoded = []
        for image in given:
            if len(decoded) == CALIBRATION_INPUTS:
                break
            try:
                decoded.append(image if isinstance(image, Image.Image) else decode_image(image))
            except Exception:  # noqa: BLE001  (an undecodable calibration image is left out, as the job will)
                continue
        if decoded:
            return preprocess_batch(decoded, self.spec), "of the given images"
        return preprocess_batch(calibration_images(CALIBRATION_INPUTS), self.spec), CALIBRATION_KIND

    @property
    def config(self) -> ViTConfig:
        return self.net.config

    @property
    def source_id(self) -> str:
        """The model's source, as an absolute path when it is a local file or folder: what identifies it in
        a job's settings or an index."""
        source = str(self.source)
        return str(Path(source).resolve()) if Path(source).exists() else source

    @property
    def labels(self) -> tuple[str, ...]:
        return self.net.config.labels

    @property
    def runtime(self) -> str:
        """What computes the outputs: "exact" (the plain fp32 network or its packed fp32 form, within ~1e-5), else
        the backend and dtype ("eager bf16", "onnx int8", ...)."""
        info = getattr(self.net, "runtime", None)
        if info is None or (info.dtype == "fp32" and info.backend in ("eager", "compile")):
            return "exact"
        return f"{info.backend} {info.dtype}"

    @property
    def job_settings(self) -> dict:
        """What a batch job's rows depend on besides the model's source and input size: the runtime when it is not
        exact fp32 (a job is never resumed in another precision), and a zero-shot classifier's label set."""
        return {} if self.runtime == "exact" else {"runtime": self.runtime}

    def preprocess(self, images: ImageInput | list[ImageInput]) -> torch.Tensor:
        """Images (PIL, paths or encoded bytes) -> (B, 3, H, W) float32 on the CPU."""
        images = images if isinstance(images, list) else [images]
        decoded = [img if isinstance(img, Image.Image) else decode_image(img) for img in images]
        return preprocess_batch(decoded, self.spec)

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, num_classes) on the CPU."""
        return self.net(pixels.to(self.device, non_blocking=True)).float().cpu()

    def top_k(self, logits: torch.Tensor, k: int = 5) -> list[list[Prediction]]:
        if not self.config.num_classes:
            raise ValueError(f"{self.source} is a backbone without a classifier head: use embeddings instead")
        probs = logits.softmax(dim=-1)
        scores, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)  # (B, k)
        return [[Prediction(int(i), self.labels[int(i)], float(s)) for s, i in zip(row_s, row_i)]
                for row_s, row_i in zip(scores, indices)]

    def classify(self, images: ImageInput | list[ImageInput], top_k: int = 5) -> list[list[Prediction]]:
        return self.top_k(self(self.preprocess(images)), top_k)

    @property
    def default_pool(self) -> str:
        """The checkpoint's own embedding: 'prelogits' where the pooling is learned with the model (SigLIP's
        attention pooling, CLIP's projection into the image-text space), 'mean' for BEiT (then fc_norm), else
        'cls' after the final norm (ViT, DeiT, DINOv2, MAE; a ViT pooler dense layer is left out: only
        ImageNet-21k backbones have one, trained for pre-training only). Register tokens are never pooled."""
        cfg = self.config
        if cfg.pool == "map" or cfg.proj_dim:
            return "prelogits"
        return "mean" if cfg.pool == "mean" else "cls"

    def embedding_shape(self, pool: str | None = None, layers: list[int] | None = None) -> tuple[int, ...]:
        """Shape of one input's embedding: (D,), (T, D) for tokens, with a leading (L,) for several layers."""
        pool = pool or self.default_pool
        cfg = self.config
        grid = self.spec.input_size // cfg.patch_size
        one = {"tokens": (cfg.num_prefix_tokens + grid * grid, cfg.width),
               "prelogits": (cfg.embed_dim,), "cls_mean": (2 * cfg.width,)}.get(pool, (cfg.width,))
        return one if layers is None else (len(layers), *one)

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor, pool: str | None = None, layers: list[int] | None = None,
                     normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) -> embeddings (B, *embedding_shape) as float32 on the CPU.

        pool: 'cls' class token, 'mean' patch-token mean (then fc_norm where the model pools that way, as
        BEiT), 'tokens' every token, 'prelogits' the head's input (includes a pooler layer when the
        checkpoint has one: only trained in e.g. the ImageNet-21k backbone). Default: `default_pool`.
        layers: block indices (negative from the end) -> the raw hidden states of those blocks (as
        transformers' hidden_states), pooled the same way; default: the final, normed tokens.
        normalize: L2-normalize each vector (each token for 'tokens')."""
        pool = pool or self.default_pool
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}: choose {', '.join(POOLS)}")
        if layers is not None and pool == "prelogits":
            raise ValueError("'prelogits' pools the final layer only; use cls, mean or tokens with --layers")
        pixels = pixels.to(self.device, non_blocking=True)
        if layers is None:
            out = self.net.pool_pixels(pixels, pool)  # (B, ...)
        else:
            hidden = self.net.forward_intermediates(pixels, layers)  # [(B, T, D)] per layer
            out = torch.stack([self.net.pool(h, pool, final=False) for h in hidden], dim=1)  # (B, L, ...)
        out = out.float()
        return torch.nn.functional.normalize(out, dim=-1).cpu() if normalize else out.cpu()

    def embed(self, images: ImageInput | list[ImageInput], pool: str | None = None,
              layers: list[int] | None = None, normalize: bool = True) -> torch.Tensor:
        return self.embed_pixels(self.preprocess(images), pool, layers, normalize)

    def save(self, target: str | Path, format: str = "hf", arch: str | None = None) -> Path:
        if self.layout == "onnx":
            raise ValueError(f"{self.source} is an ONNX graph: convert from the original checkpoint instead")
        if format == "onnx":
            from vitkit.onnx import export_onnx

            export_onnx(self, target, dynamic_batch=True)
            return Path(target)
        return save(self.net, self.spec, format, target, arch)


def load(model: str | None = None, arch: str | None = None, *, image_size: int | None = None,
         device: str | None = "cpu", backend: str | None = None, dtype: str | None = None, precision: str = "exact",
         batch_size: int = 16, calibration: list[ImageInput] | None = None, log=None, **runtime) -> Model:
    """Load a registry name, hub id, local folder or weights file (with `arch` when it carries no
    config; `arch` alone gives random weights). `image_size` runs the model at another resolution.
    backend/dtype ("auto", "eager", "compile"; "fp32", "bf16", "fp16") give a fast inference-only
    network (see vitkit.runtime); without them the network is the plain, trainable one.

    precision="fast": the fastest runtime here whose top-1 agreement with fp32 is >= 99% and embedding cosine
    >= 0.999 on `calibration` (images; default: a generated set), measured at `batch_size`, cached per model and
    machine (vitkit.runtime.fast); `model.fast` says what was chosen and why. `log`: a function that gets its
    progress lines (e.g. print)."""
    from vitkit.runtime.onnx_backend import is_onnx_file, load_onnx

    if is_onnx_file(model):  # graph, preprocessing and labels all come from the file
        return Model(load_onnx(model, device=resolve_device(device), image_size=image_size), device=device)
    loaded = load_network(model, arch, **runtime)
    return Model(loaded, device=device, image_size=image_size, backend=backend, dtype=dtype, precision=precision,
                 batch_size=batch_size, calibration=calibration, log=log)
