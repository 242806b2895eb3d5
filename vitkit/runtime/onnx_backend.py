"""The ONNX Runtime backend: `OnnxNet`, an onnxruntime session that stands where vitkit's `Model` keeps its network.

Where it comes from
    load_onnx(path)                       a file written by `vitkit export onnx` -> `Loaded` (net, preprocessing
                                          and labels from the file's metadata, layout "onnx")
    onnx_from_network(net, spec, ...)     `--backend onnx` on any other checkpoint: exported in memory at the
                                          input size (dynamic batch), verified against PyTorch, then run

What it offers (the inference subset of `VisionTransformer`; fp32 pixels in, fp32 CPU tensors out)
    net(pixels)                     logits (B, C)                 graph output `logits`
    net.forward_features(pixels)    final normed tokens (B, T, D) graph output `features`
    net.pool_pixels(pixels, pool)   'cls' | 'mean' | 'tokens' | 'prelogits': what `Model.embed_pixels` uses
    net.config / .labels / .spec / .runtime (backend "onnx") / .state_dict() (meta tensors: shapes only)
Not available: forward_head / pool from tokens (the graph runs from pixels), forward_intermediates (embed
--layers), attention_maps, training, other input sizes (one file per size: export another).

Try it:  python -c "from vitkit.runtime.onnx_backend import load_onnx; import torch; \
net = load_onnx('/tmp/deit.onnx').net; print(net.runtime, net(torch.rand(2, 3, 224, 224)).shape)"
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitkit.config import PreprocessSpec, ViTConfig
from vitkit.models.vit import POOLS
from vitkit.onnx.export import export_bytes
from vitkit.onnx.format import FEATURES, LOGITS, PRE_LOGITS, OnnxMetadata, metadata_from_props
from vitkit.onnx.session import Session
from vitkit.runtime.backends import RuntimeInfo, RuntimeUnavailable

def _check_device(device: torch.device) -> None:
    import onnxruntime as ort

    if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeUnavailable("the onnx backend on a GPU needs onnxruntime-gpu (CUDAExecutionProvider); this "
                                 f"onnxruntime has only {', '.join(ort.get_available_providers())}")
    if device.type not in ("cpu", "cuda"):
        raise RuntimeUnavailable(f"device {device} is not supported by the onnx backend: use cpu or cuda")


class OnnxNet(nn.Module):
    """An onnxruntime session over a vitkit-exported graph, usable where `Model` uses its network for inference."""

    def __init__(self, model: str | Path | bytes, device: str | torch.device = "cpu", threads: int | None = None,
                 source: str | None = None):
        super().__init__()
        device = torch.device(device)
        _check_device(device)
        self.graph = Session(model, device, threads)
        self.session = self.graph.session
        name = source or ("<in-memory ONNX graph>" if isinstance(model, (bytes, bytearray)) else str(model))
        self.meta: OnnxMetadata = metadata_from_props(dict(self.session.get_modelmeta().custom_metadata_map), name)
        self.config: ViTConfig = self.meta.config
        self.spec: PreprocessSpec = self.meta.preprocess
        self.source = name
        self.outputs = self.graph.outputs
        self.input_shape = self.session.get_inputs()[0].shape  # ['batch' or 1, 3, S, S]
        self.dynamic_batch = self.graph.dynamic_batch
        self.runtime = RuntimeInfo("onnx", self.meta.dtype, str(device), packed=False)
        self._device = device

    def __repr__(self) -> str:
        return (f"OnnxNet({self.source!r}, {self.meta.dtype}, input {self.input_shape}, outputs {self.outputs}, "
                f"providers {self.session.get_providers()})")

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    @property
    def image_size(self) -> int:
        return self.spec.input_size

    # -- running the graph ---------------------------------------------------------------------------------
    def run(self, pixels: torch.Tensor | np.ndarray, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Pixels (B, 3, S, S) -> {output name: array}; a batch-1 graph is run one input at a time."""
        x = pixels.detach().float().cpu().numpy() if isinstance(pixels, torch.Tensor) else pixels
        x = np.ascontiguousarray(x, dtype=np.float32)
        size, channels = self.spec.input_size, self.config.in_chans
        if x.ndim != 4 or x.shape[1:] != (channels, size, size):
            raise ValueError(f"this ONNX graph takes pixels (B, {channels}, {size}, {size}), got {tuple(x.shape)}: it "
                             f"was exported at {size} px; export another file for another size "
                             "(vitkit export onnx --image-size N)")
        return self.graph.run(x, names or self.outputs)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> logits (B, num_classes), float32 on the CPU."""
        if LOGITS not in self.outputs:
            raise ValueError(f"{self.source} is a backbone without a classifier head: use embeddings instead")
        return torch.from_numpy(self.run(pixels, [LOGITS])[LOGITS])

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> final normed tokens (B, T, D)."""
        return torch.from_numpy(self.run(pixels, [FEATURES])[FEATURES])

    def _mean_is_prelogits(self) -> bool:
        cfg = self.config
        return cfg.pool == "mean" and not cfg.pre_logits_dim and not cfg.proj_dim

    def pool_pixels(self, pixels: torch.Tensor, pool: str) -> torch.Tensor:
        """(B, 3, S, S) -> un-normalized embeddings as `Model.embed_pixels` pools the final layer: 'cls' (B, D),
        'mean' (B, D; fc_norm applied where the model has it), 'tokens' (B, T, D), 'prelogits' (B, D')."""
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}: choose {', '.join(POOLS)}")
        out = self.run(pixels, [FEATURES, PRE_LOGITS])
        tokens = torch.from_numpy(out[FEATURES])
        if pool == "tokens":
            return tokens
        if pool in ("cls", "cls_mean"):
            if not self.config.class_token:
                raise ValueError("this model has no class token: pool 'mean', 'prelogits' or 'tokens'")
            if pool == "cls_mean":
                return torch.cat((tokens[:, 0], tokens[:, self.config.num_prefix_tokens:].mean(dim=1)), dim=-1)
            return tokens[:, 0]
        if pool == "prelogits":
            return torch.from_numpy(out[PRE_LOGITS])
        if not self.config.fc_norm:
            return tokens[:, self.config.num_prefix_tokens:].mean(dim=1)
        if self._mean_is_prelogits():
            return torch.from_numpy(out[PRE_LOGITS])
        raise NotImplementedError("this ONNX graph has no fc_norm(mean) output for this model's pooling")

    # -- what the graph does not have ----------------------------------------------------------------------
    def forward_head(self, tokens, pre_logits: bool = False):
        raise NotImplementedError("the ONNX graph runs from pixels: use forward (logits) or pool_pixels")

    def pool(self, tokens, kind: str, final: bool = True):
        raise NotImplementedError("the ONNX graph runs from pixels: use pool_pixels")

    def forward_intermediates(self, pixels, indices, norm: bool = False):
        raise NotImplementedError("the ONNX graph outputs the final layer only: for --layers use the PyTorch "
                                  "backends (eager, compile)")

    def attention_maps(self, pixels):
        raise NotImplementedError("the ONNX graph has no attention-map outputs: use the PyTorch network")

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("an ONNX Runtime network is for inference only; to train, load the PyTorch network")
        return super().train(False)

    def to(self, *args, **kwargs):
        device, dtype, *_ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None:
            raise RuntimeError("an ONNX graph keeps the dtype it was exported with (vitkit export onnx --dtype)")
        if device is not None and device.type != self._device.type:
            raise RuntimeUnavailable(f"this ONNX session runs on {self._device}; load it with device={device}")
        return self

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The network's parameter names and shapes (meta tensors: no data), for counting parameters."""
        from vitkit.models.vit import VisionTransformer

        with torch.device("meta"):
            return VisionTransformer(self.config).state_dict()

    def load_state_dict(self, *args, **kwargs):
        raise RuntimeError("an ONNX graph's weights are fixed: load the weights into PyTorch and export again")


# -- where it comes from -----------------------------------------------------------------------------------
def is_onnx_file(model: str | Path | None) -> bool:
    return model is not None and str(model).lower().endswith(".onnx") and Path(model).is_file()


def load_onnx(path: str | Path, device: str | torch.device = "cpu", image_size: int | None = None,
              threads: int | None = None):
    """A file written by `vitkit export onnx` -> `Loaded(net=OnnxNet, preprocess=<the file's spec>, source,
    layout="onnx")`. image_size, when given, must be the size the file was exported at."""
    from vitkit.checkpoints.convert import Loaded

    net = OnnxNet(path, device, threads)
    if image_size and image_size != net.spec.input_size:
        raise ValueError(f"{path} was exported at {net.spec.input_size} px and runs at that size only; export "
                         f"another file for {image_size} px (vitkit export onnx --image-size {image_size})")
    return Loaded(net, net.spec, str(path), "onnx")


def resolve_onnx_dtype(dtype: str | None, device: torch.device) -> str:
    """'auto'/None -> fp32 on a CPU, fp16 on a GPU; 'fp32' anywhere; 'fp16' on a GPU only; no bf16."""
    dtype = dtype or "auto"
    if dtype == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if dtype == "fp16" and device.type != "cuda":
        raise RuntimeUnavailable("fp16 ONNX graphs are for GPUs (onnxruntime-gpu); on a CPU use --dtype fp32")
    if dtype not in ("fp32", "fp16"):
        raise RuntimeUnavailable(f"the onnx backend runs fp32 or fp16 graphs, not {dtype}")
    return dtype


def onnx_from_network(net, spec: PreprocessSpec, image_size: int | None = None, dtype: str | None = "auto",
                      device: str | torch.device = "cpu", source: str | None = None,
                      threads: int | None = None) -> OnnxNet:
    """`--backend onnx` for a PyTorch checkpoint: export `net` in memory at image_size (default spec.input_size),
    with a dynamic batch, verify it against PyTorch on random inputs, and return the session."""
    device = torch.device(device)
    dtype = resolve_onnx_dtype(dtype, device)
    data, _ = export_bytes(net, spec=spec, image_size=image_size, dynamic_batch=True, dtype=dtype, source=source,
                           verify_random=2, verify_photos=[])
    return OnnxNet(data, device, threads, source=f"{source or 'network'} (onnxruntime, {dtype})")
