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
from vitkit.models.vit import POOLS, VECTOR_POOLS  # noqa: F401  (VECTOR_POOLS: re-exported for the features)

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
                 backend: str | None = None, dtype: str | None = None):
        self.device = resolve_device(device)
        self.net = loaded.net.to(self.device).eval()
        self.spec: PreprocessSpec = loaded.preprocess.at_size(image_size or loaded.preprocess.input_size)
        check_tokens(self.spec.input_size, loaded.net.config.patch_size, "--image-size")
        if backend or dtype:  # a fast inference network (vitkit.runtime); without them it stays trainable
            from vitkit.runtime import inference_network

            self.net = inference_network(self.net, self.spec, backend or "auto", dtype or "auto", self.device,
                                         loaded.source)
        self.source = loaded.source
        self.layout = loaded.layout

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
    def job_settings(self) -> dict:
        """What a batch job's rows depend on besides the model's source and input size (nothing, for a plain
        model; a zero-shot classifier adds its label set)."""
        return {}

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
         device: str | None = "cpu", backend: str | None = None, dtype: str | None = None, **runtime) -> Model:
    """Load a registry name, hub id, local folder or weights file (with `arch` when it carries no
    config; `arch` alone gives random weights). `image_size` runs the model at another resolution.
    backend/dtype ("auto", "eager", "compile"; "fp32", "bf16", "fp16") give a fast inference-only
    network (see vitkit.runtime); without them the network is the plain, trainable one."""
    from vitkit.runtime.onnx_backend import is_onnx_file, load_onnx

    if is_onnx_file(model):  # graph, preprocessing and labels all come from the file
        return Model(load_onnx(model, device=resolve_device(device), image_size=image_size), device=device)
    loaded = load_network(model, arch, **runtime)
    return Model(loaded, device=device, image_size=image_size, backend=backend, dtype=dtype)
