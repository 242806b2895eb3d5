"""The Python API: `vitkit.load(...)` returns a `Model` that preprocesses, predicts and saves.

    import vitkit
    model = vitkit.load("vitkit/assets/digits-vit")                 # or a hub id, a folder, a weights file
    result = model.classify("digit.png", top_k=3)                   # one input -> one Classification
    result.label, result.score, result.to_dict()
    results = model.classify(["a.jpg", pil_image, numpy_hwc, open("b.png", "rb")], errors="skip")
    vitkit.to_records(results)                                      # flat rows: pandas.DataFrame(...)
    vectors = model.embed(["a.jpg", "b.jpg"], batch_size=32)        # (2, D) L2-normalised

Inputs: paths, encoded bytes, binary file objects, PIL images, numpy arrays (H, W[, C]) and torch tensors (C, H, W)
(vitkit.data.inputs). errors="raise" (default) stops at the first input that cannot be read; errors="skip" gives
every input its result, a bad one with its `error` and no predictions.

Try it:  python -m pytest tests/test_api.py -q
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from vitkit.checkpoints.convert import Loaded, load_network
from vitkit.checkpoints.save import save
from vitkit.config import PreprocessSpec, ViTConfig
from vitkit.choices import POOLS, PRECISIONS, VECTOR_POOLS  # noqa: F401  (VECTOR_POOLS: re-exported)
from vitkit.data.decode import read_error
from vitkit.data.inputs import ImageInput, describe, to_image
from vitkit.data.transforms import preprocess_batch
from vitkit.limits import check_tokens

if TYPE_CHECKING:
    from PIL import Image

ERRORS = ("raise", "skip")


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    score: float  # softmax probability (multi-label heads, zero-shot SigLIP: its sigmoid probability)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "score": self.score}


class Classification(list[Prediction]):
    """The top-k `Prediction`s of one input, best first (a list of them), with what the input was and, when it could
    not be read (errors="skip"), why: `error` set and no predictions."""

    def __init__(self, predictions: list[Prediction], input: str, error: str | None = None):
        super().__init__(predictions)
        self.input, self.error = input, error

    @property
    def label(self) -> str | None:
        """The top-1 label (None for an input that failed)."""
        return self[0].label if self else None

    @property
    def score(self) -> float | None:
        return self[0].score if self else None

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "predictions": [p.to_dict() for p in self], "error": self.error}

    def __repr__(self) -> str:
        inner = f"error={self.error!r}" if self.error else ", ".join(f"{p.label!r} {p.score:.3f}" for p in self)
        return f"Classification({self.input!r}: {inner})"


def to_records(results: "Classification | list[Classification]") -> list[dict[str, Any]]:
    """Flat rows (input, rank, index, label, score, error), one per prediction and one per failed input:
    `pandas.DataFrame(vitkit.to_records(results))`."""
    rows: list[dict[str, Any]] = []
    for result in [results] if isinstance(results, Classification) else results:
        if result.error is not None:
            rows.append({"input": result.input, "rank": None, "index": None, "label": None, "score": None,
                         "error": result.error})
        rows.extend({"input": result.input, "rank": rank, **p.to_dict(), "error": None}
                    for rank, p in enumerate(result, 1))
    return rows


class Embeddings(list[torch.Tensor | None]):
    """embed(..., errors="skip"): one vector per input (a list of tensors), None for an input that failed, with
    `errors` (the reason per input, None where it worked) and `stack()` -> (good inputs, D) with their positions."""

    def __init__(self, vectors: list[torch.Tensor | None], errors: list[str | None], inputs: list[str]):
        super().__init__(vectors)
        self.errors, self.inputs = errors, inputs

    def stack(self) -> tuple[torch.Tensor, list[int]]:
        good = [i for i, v in enumerate(self) if v is not None]
        return (torch.stack([v for v in self if v is not None]) if good else torch.empty(0)), good


def dtype_name(dtype: str | torch.dtype | None) -> str | None:
    """torch.float32 / bfloat16 / float16 or their names -> "fp32" / "bf16" / "fp16" (strings pass through)."""
    if isinstance(dtype, torch.dtype):
        names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        if dtype not in names:
            raise ValueError(f"dtype {dtype} is not a compute dtype vitkit runs: use torch.float32, torch.bfloat16 or "
                             "torch.float16")
        return names[dtype]
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dtype, dtype) if dtype else dtype


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

    def __init__(self, loaded: Loaded, device: str | torch.device | None = "auto", image_size: int | None = None,
                 backend: str | None = None, dtype: str | torch.dtype | None = None, precision: str = "exact",
                 batch_size: int = 16, calibration: list[ImageInput] | None = None,
                 log: Callable[[str], None] | None = None, resize_mode: str = "crop"):
        dtype = dtype_name(dtype)
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
        if precision == "fast" and (backend not in (None, "auto") or dtype not in (None, "auto")):
            raise ValueError("precision 'fast' (--fast) chooses the backend and dtype itself: drop --backend/--dtype")
        self.device = resolve_device(device)
        self.net = loaded.net.to(self.device).eval()
        self.resize_mode = resize_mode  # "crop" (the checkpoint's own), "pad" or "squash": PreprocessSpec.with_resize_mode
        self.spec: PreprocessSpec = loaded.preprocess.at_size(image_size or loaded.preprocess.input_size
                                                              ).with_resize_mode(resize_mode)
        check_tokens(self.spec.input_size, loaded.net.config.patch_size, "--image-size")
        self.source = loaded.source
        self.layout = loaded.layout
        self.provenance: dict[str, Any] = loaded.provenance  # the hub commit, the sha256 of the weights files read
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
        """Pixels to check a fast runtime on: the first of `images` (files, folders, globs, any ImageInput) that read,
        else a generated set."""
        from vitkit.data.calibration import CALIBRATION_KIND, calibration_images
        from vitkit.data.sources import expand_inputs
        from vitkit.runtime.fast import CALIBRATION_INPUTS

        given: list[ImageInput] = []
        for image in images or []:
            given.extend(expand_inputs([str(image)]) if isinstance(image, (str, Path)) else [image])
        decoded: list[Image.Image] = []
        for image in given:
            if len(decoded) == CALIBRATION_INPUTS:
                break
            try:
                decoded.append(to_image(image))
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
    def job_settings(self) -> dict[str, Any]:
        """What a batch job's rows depend on besides the model's source and input size: the runtime when it is not
        exact fp32 (a job is never resumed in another precision), a resize mode other than the checkpoint's crop,
        and a zero-shot classifier's label set."""
        settings = {} if self.runtime == "exact" else {"runtime": self.runtime}
        return settings if self.resize_mode == "crop" else {**settings, "resize_mode": self.resize_mode}

    def preprocess(self, images: ImageInput | list[ImageInput]) -> torch.Tensor:
        """Images (any ImageInput) -> (B, 3, H, W) float32 on the CPU, the checkpoint's resize, crop and
        normalisation. Raises on the first input that cannot be read."""
        images = images if isinstance(images, (list, tuple)) else [images]
        return preprocess_batch([to_image(image) for image in images], self.spec)

    def _batches(self, images: ImageInput | list[ImageInput], batch_size: int, errors: str
                 ) -> tuple[bool, list[str], Iterator[tuple[list[int], torch.Tensor]], dict[int, str]]:
        """-> (single input?, descriptions, per batch: (positions, pixels (b, 3, H, W)), errors by position)."""
        if errors not in ERRORS:
            raise ValueError(f"errors must be one of {', '.join(ERRORS)}, got {errors!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        single = not isinstance(images, (list, tuple))
        items: list[ImageInput] = list(images) if isinstance(images, (list, tuple)) else [images]
        names, failed = [describe(item) for item in items], {}

        def batches() -> Iterator[tuple[list[int], torch.Tensor]]:
            for start in range(0, len(items), batch_size):
                good, pictures = [], []
                for i in range(start, min(start + batch_size, len(items))):
                    try:
                        pictures.append(to_image(items[i]))
                        good.append(i)
                    except Exception as err:  # noqa: BLE001 - one input's failure is that input's error
                        if errors == "raise" and isinstance(err, ValueError):  # the reason, naming the input
                            raise type(err)(f"{names[i]}: {err}") from err
                        if errors == "raise":
                            raise
                        failed[i] = read_error(err)
                if good:
                    yield good, preprocess_batch(pictures, self.spec)

        return single, names, batches(), failed

    def classify(self, images: ImageInput | list[ImageInput], top_k: int = 5, *, batch_size: int = 16,
                 errors: str = "raise") -> Classification | list[Classification]:
        """Top-k labels of one image (-> a Classification) or of a list of them (-> one Classification per input, in
        order), `batch_size` images per forward pass.

            >>> model = vitkit.load("vitkit/assets/digits-vit")
            >>> model.classify(numpy.zeros((32, 32, 3), numpy.uint8), top_k=2).label   # a black square
            '8'
            >>> [r.error for r in model.classify([b"not an image", numpy.zeros((32, 32))], errors="skip")]
            ['not an image: cannot identify image file', None]
        """
        single, names, batches, failed = self._batches(images, batch_size, errors)
        found: dict[int, list[Prediction]] = {}
        for positions, pixels in batches:
            found.update(zip(positions, self.top_k(self(pixels), top_k)))
        results = [Classification(found.get(i, []), name, failed.get(i)) for i, name in enumerate(names)]
        return results[0] if single else results

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, num_classes) on the CPU."""
        logits: torch.Tensor = self.net(pixels.to(self.device, non_blocking=True)).float().cpu()
        return logits

    def top_k(self, logits: torch.Tensor, k: int = 5) -> list[list[Prediction]]:
        if not self.config.num_classes:
            raise ValueError(f"{self.source} is a backbone without a classifier head: use embeddings instead")
        if self.config.multi_label:
            return self._over_thresholds(logits, k)
        probs = logits.softmax(dim=-1)
        scores, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)  # (B, k)
        return [[Prediction(int(i), self.labels[int(i)], float(s)) for s, i in zip(row_s, row_i)]
                for row_s, row_i in zip(scores, indices)]

    def _over_thresholds(self, logits: torch.Tensor, k: int) -> list[list[Prediction]]:
        """A multi-label head: every label whose sigmoid score reaches its threshold, best first, at most k."""
        probs = logits.sigmoid()  # (B, C)
        thresholds = torch.tensor(self.config.class_thresholds(), dtype=probs.dtype)  # (C,)
        rows = []
        for row in probs:
            kept = (row >= thresholds).nonzero().flatten()
            best = kept[row[kept].argsort(descending=True, stable=True)][:k]
            rows.append([Prediction(int(i), self.labels[int(i)], float(row[i])) for i in best])
        return rows

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
              layers: list[int] | None = None, normalize: bool = True, *, batch_size: int = 16,
              errors: str = "raise") -> torch.Tensor | Embeddings:
        """Embeddings of one image (-> (*embedding_shape)) or of a list (-> (N, *embedding_shape)), float32 on the
        CPU, `batch_size` images per forward pass; pool / layers / normalize as `embed_pixels`. errors="skip" ->
        `Embeddings`: a vector or None per input, with the errors.

            >>> model = vitkit.load("vitkit/assets/digits-vit")
            >>> model.embed([numpy.zeros((32, 32, 3), numpy.uint8)] * 2, batch_size=1).shape
            torch.Size([2, 64])
        """
        single, names, batches, failed = self._batches(images, batch_size, errors)
        found: dict[int, torch.Tensor] = {}
        for positions, pixels in batches:
            found.update(zip(positions, self.embed_pixels(pixels, pool, layers, normalize)))
        if errors == "skip":
            vectors = [found.get(i) for i in range(len(names))]
            return Embeddings(vectors, [failed.get(i) for i in range(len(names))], names)
        if single:
            return found[0]
        return torch.stack([found[i] for i in range(len(names))]) if names else \
            torch.empty(0, *self.embedding_shape(pool, layers))

    def save(self, target: str | Path, format: str = "hf", arch: str | None = None) -> Path:
        """Write the model with its labels and preprocessing: "hf" (a transformers folder), "timm", "safetensors"
        (vitkit's one file), "jax" (.npz) or "onnx" (a verified dynamic-batch graph). -> the written path.

            >>> vitkit.load("vitkit/assets/digits-vit").save(f"{tempfile.mkdtemp()}/digits-hf").name
            'digits-hf'
        """
        if self.layout == "onnx":
            raise ValueError(f"{self.source} is an ONNX graph: convert from the original checkpoint instead")
        if format == "onnx":
            from vitkit.onnx import export_onnx

            export_onnx(self, target, dynamic_batch=True)
            return Path(target)
        written: Path = save(self.net, self.spec, format, target, arch)
        return written


def load(model: str | None = None, arch: str | None = None, *, image_size: int | None = None,
         device: str | torch.device | None = "auto", backend: str | None = None,
         dtype: str | torch.dtype | None = None, precision: str = "exact", batch_size: int = 16,
         calibration: list[ImageInput] | None = None, log: Callable[[str], None] | None = None,
         num_classes: int | None = None,
         labels: list[str] | None = None, resize_mode: str = "crop", revision: str | None = None,
         **runtime: Any) -> Model:
    """Load a registry name, hub id, local folder or weights file (with `arch` when it carries no
    config; `arch` alone gives random weights). `image_size` runs the model at another resolution.
    device: "auto" (default: a CUDA GPU when there is one, else the CPU), "cpu", "cuda:1", a torch.device.
    backend/dtype ("auto", "eager", "compile"; "fp32", "bf16", "fp16" or torch.float32 / bfloat16 / float16) give a
    fast inference-only network (see vitkit.runtime); without them the network is the plain, trainable one.
    num_classes / labels: a fresh classifier head for that many classes (named by `labels`, else class_0 ...),
    initialised as for training (the backbone's weights kept): the start of a fine-tune.
    revision: a hub branch, tag or commit to read (as "org/name@REV"); model.provenance records the commit read and
    the sha256 of every weights file.
    resize_mode: "crop" (the checkpoint's own centre crop), "pad" (the whole image letterboxed onto the mean colour:
    wide product photos, documents, panoramas) or "squash" (the whole image stretched to the square).

        >>> vitkit.load("vitkit/assets/digits-vit").config.num_classes
        10
        >>> vitkit.load("vitkit/assets/digits-vit", labels=["even", "odd"]).labels
        ('even', 'odd')

    precision="fast": the fastest runtime here whose top-1 agreement with fp32 is >= 99% and embedding cosine
    >= 0.999 on `calibration` (images; default: a generated set), measured at `batch_size`, cached per model and
    machine (vitkit.runtime.fast); `model.fast` says what was chosen and why. `log`: a function that gets its
    progress lines (e.g. print)."""
    from vitkit.runtime.onnx_backend import is_onnx_file, load_onnx

    if is_onnx_file(model):  # graph, preprocessing and labels all come from the file
        from vitkit.checkpoints.provenance import provenance

        onnx_file = cast(str, model)  # is_onnx_file is true of a path only
        graph = load_onnx(onnx_file, device=resolve_device(device), image_size=image_size)
        graph.provenance = provenance(onnx_file, None)
        return Model(graph, device=device, resize_mode=resize_mode)
    loaded = load_network(model, arch, revision, **runtime)
    if num_classes is not None or labels is not None:
        names = list(labels) if labels is not None else [f"class_{i}" for i in range(num_classes or 0)]
        if num_classes is not None and len(names) != num_classes:
            raise ValueError(f"{len(names)} labels for num_classes={num_classes}")
        if not names:
            raise ValueError("num_classes must be >= 1 (a backbone without a head: load it without num_classes)")
        loaded.net.reset_classifier(names)
    return Model(loaded, device=device, image_size=image_size, backend=backend, dtype=dtype, precision=precision,
                 batch_size=batch_size, calibration=calibration, log=log, resize_mode=resize_mode)
