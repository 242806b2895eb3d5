"""One inference interface over runtime backends: `prepare(net, backend, dtype, device)`.

    backend  "eager"    PyTorch eager. On a CPU with oneDNN every linear layer runs on a pre-packed weight
                        (`packed_linear.PackedLinear`: GELU and residual adds fused, layer scale folded);
                        attention is SDPA, as in the plain network.
             "compile"  torch.compile of `forward_features` (inductor; on CPU with weight freezing, which
                        packs the weights itself). Opt-in: the first call of each input shape compiles
                        (12-30 s on 2 cores); smaller batches are padded up to the first batch size seen,
                        larger ones split into chunks of it, so that a stream of batches compiles once.
                        Memory: inductor keeps its own packed constants besides the module's weights.
             "onnx"     not a way to prepare this network: an onnxruntime session replaces it
                        (`vitkit.runtime.inference_network`, vitkit.runtime.onnx_backend).
             "auto"     "eager".
    dtype    "fp32" | "bf16" (CPU with native bf16 instructions, or a GPU that has it) | "fp16" (GPU only)
             "auto": fp32 on a CPU (fast and within 1e-4 of the plain network), bf16 on a GPU that supports it,
             else fp16.

Inputs are fp32 pixels, outputs fp32 whatever the compute dtype. `prepare` transforms the network *in
place* (a second copy of the weights is never made) and returns it: the same object, still a
`VisionTransformer` with `forward`, `forward_features`, `forward_head(tokens, pre_logits=)`,
`forward_intermediates(x, indices, norm=)`, `attention_maps`, `.config`, and `.runtime` describing what was
chosen. It is for inference only (eval mode, no gradients, no `load_state_dict`; `state_dict()` still gives
the original keys in fp32, so it can be saved). To fine-tune, load the plain network and do not prepare it.

Try it:  python -c "import torch, vitkit.runtime as rt; from vitkit.config import variant; \
from vitkit.models.vit import VisionTransformer; net = rt.prepare(VisionTransformer(variant('Ti/16'))); \
print(net.runtime, net(torch.rand(1, 3, 224, 224)).shape)"
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn

from vitkit.choices import BACKENDS, DTYPES
from vitkit.models.layers import Block
from vitkit.models.vit import VisionTransformer
from vitkit.runtime.memory import release_file_pages
from vitkit.runtime.packed_linear import (
    InferenceBlock, PackedLinear, PackedPatchEmbed, packed_linear, packing_available,
)

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class RuntimeUnavailable(ValueError):
    """The asked-for backend / dtype cannot run on this machine (the message says why and what can)."""


@dataclass
class RuntimeInfo:
    backend: str  # "eager" | "compile"
    dtype: str  # "fp32" | "bf16" | "fp16"
    device: str
    packed: bool  # linear layers on oneDNN pre-packed weights
    compile_s: float | None = None  # wall time of the first (compiling) call, once it happened
    compiled_batch: int | None = None  # the batch size the compiled graph was built for

    def to_dict(self) -> dict:
        return asdict(self)


# -- what this machine can do ------------------------------------------------------------------------
def cpu_bf16_native() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX) that oneDNN uses. Without them
    oneDNN emulates bf16, slower than fp32, so it is refused rather than silently slow."""
    if not torch.backends.mkldnn.is_available():
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def cuda_bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def _device(device: torch.device | str | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve(backend: str = "auto", dtype: str = "auto", device: torch.device | str | None = None
            ) -> tuple[str, str, torch.device]:
    """Check a backend/dtype request against this machine: -> (backend, dtype, device), "auto" resolved.
    Raises RuntimeUnavailable with the reason."""
    device = _device(device)
    if backend not in BACKENDS:
        raise RuntimeUnavailable(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise RuntimeUnavailable(f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if backend == "onnx":
        raise RuntimeUnavailable("the onnx backend replaces the network with an onnxruntime session instead of "
                                 "preparing it: use vitkit.runtime.inference_network or vitkit.load(..., backend='onnx')")
    backend = "eager" if backend == "auto" else backend
    if device.type not in ("cpu", "cuda"):
        raise RuntimeUnavailable(f"device {device} is not supported: use cpu or cuda")
    if dtype == "auto":
        dtype = "fp32" if device.type == "cpu" else ("bf16" if cuda_bf16(device) else "fp16")
    if dtype == "fp16" and device.type == "cpu":
        raise RuntimeUnavailable("fp16 runs on a GPU only; on a CPU use --dtype bf16 (where the CPU has bf16 "
                                 "instructions) or fp32")
    if dtype == "bf16" and device.type == "cpu" and not cpu_bf16_native():
        raise RuntimeUnavailable("bf16 needs a CPU with bf16 instructions (AVX512-BF16 or AMX) and PyTorch built "
                                 "with oneDNN; this one has neither, and emulated bf16 is slower than fp32: "
                                 "use --dtype fp32")
    if dtype == "bf16" and device.type == "cuda" and not cuda_bf16(device):
        raise RuntimeUnavailable(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16: use --dtype fp16")
    return backend, dtype, device


def available(device: torch.device | str | None = "cpu") -> list[tuple[str, str]]:
    """Every (backend, dtype) pair of the PyTorch backends that runs on `device` here."""
    pairs = []
    for backend in ("eager", "compile"):
        for dtype in ("fp32", "bf16", "fp16"):
            try:
                resolve(backend, dtype, device)
            except RuntimeUnavailable:
                continue
            pairs.append((backend, dtype))
    return pairs


# -- the prepared network ----------------------------------------------------------------------------
class PreparedViT(VisionTransformer):
    """A `VisionTransformer` after `prepare`: the class its instance is switched to (never constructed).
    fp32 pixels in, fp32 outputs; computes in `runtime.dtype`; inference only."""

    runtime: RuntimeInfo
    prepared = True  # the marker exporters check (they do not import this module)

    @property
    def compute_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.runtime.dtype]

    def _cast(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.to(self.runtime.device, self.compute_dtype)

    def _tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, C, H, W) -> final tokens (B, T, D) in the compute dtype."""
        if getattr(self, "_compiled", None) is None:
            return VisionTransformer.forward_features(self, self._cast(pixels))
        return self._run_compiled(pixels)

    def _run_compiled(self, pixels: torch.Tensor) -> torch.Tensor:
        n = pixels.shape[0]
        if self.runtime.compiled_batch is None:  # the first call compiles: time it
            start = time.perf_counter()
            out = self._compiled(pixels.to(self.runtime.device))
            self.runtime.compile_s = time.perf_counter() - start
            self.runtime.compiled_batch = n
            return out
        size = self.runtime.compiled_batch
        if n == size:
            return self._compiled(pixels.to(self.runtime.device))
        chunks = []
        for chunk in pixels.split(size):  # pad the last chunk to the compiled shape: no recompilation
            k = chunk.shape[0]
            if k < size:
                chunk = torch.cat((chunk, chunk.new_zeros((size - k,) + chunk.shape[1:])))
            chunks.append(self._compiled(chunk.to(self.runtime.device))[:k])
        return torch.cat(chunks)

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return VisionTransformer.forward_head(self, self._tokens(pixels)).float()

    @torch.inference_mode()
    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._tokens(pixels).float()

    @torch.inference_mode()
    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        tokens = tokens.to(self.runtime.device, self.compute_dtype)
        return VisionTransformer.forward_head(self, tokens, pre_logits).float()

    @torch.inference_mode()
    def forward_intermediates(self, pixels: torch.Tensor, indices: list[int], norm: bool = False
                              ) -> list[torch.Tensor]:
        found = VisionTransformer.forward_intermediates(self, self._cast(pixels), indices, norm)
        return [t.float() for t in found]

    @torch.inference_mode()
    def attention_maps(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        return [w.float() for w in VisionTransformer.attention_maps(self, self._cast(pixels))]

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("this network was prepared for inference (vitkit.runtime.prepare); to train, "
                               "load the plain network")
        return super().train(False)

    def _load_from_state_dict(self, *args, **kwargs):
        raise RuntimeError("a prepared (inference-only) network cannot load weights: load them into the plain "
                           "VisionTransformer, then call vitkit.runtime.prepare again")

    def state_dict(self, *args, **kwargs):
        """The plain network's keys, in fp32. After a bf16/fp16 prepare the values are the rounded ones."""
        if self.runtime.dtype != "fp32":
            warnings.warn(f"this network was prepared in {self.runtime.dtype}: its state_dict holds weights rounded "
                          f"to {self.runtime.dtype}; save from the plain (unprepared) network to keep fp32",
                          stacklevel=2)
        return super().state_dict(*args, **kwargs)


def _pack(net: VisionTransformer, dtype: torch.dtype) -> None:
    """Swap the patch embedding, every block and every head linear for packed versions (CPU, oneDNN)."""
    net.patch_embed = PackedPatchEmbed(net.patch_embed, dtype)
    for i, block in enumerate(net.blocks):
        assert isinstance(block, Block), f"block {i} is already prepared"
        if net.config.mlp == "plain":  # a gated MLP (SwiGLU) keeps the plain block, cast to the compute dtype
            net.blocks[i] = InferenceBlock(block, dtype)  # the block's fp32 linear weights are dropped here
    for owner, name in ((net, "head"), (net, "head_dist"), (getattr(net, "pre_logits", None), "fc")):
        layer = getattr(owner, name, None) if owner is not None else None
        if isinstance(layer, nn.Linear):
            setattr(owner, name, packed_linear(layer, dtype))
            release_file_pages([layer.weight])
            layer.weight = None


def _cast_rest(net: VisionTransformer, dtype: torch.dtype) -> None:
    """Everything not packed (patch embedding, tokens, positions, norms) to the compute dtype; BEiT's relative
    position tables stay fp32 (the model casts the bias it builds from them)."""
    keep = {id(p) for m in net.modules() if type(m).__name__ == "RelativePositionBias" for p in m.parameters()}
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (PackedLinear, PackedPatchEmbed, InferenceBlock)):
                continue  # already in the compute dtype (and InferenceBlock's q/v biases, gammas stay fp32)
            for name, p in list(module._parameters.items()):
                if p is not None and id(p) not in keep and p.is_floating_point() and p.dtype != dtype:
                    module._parameters[name] = nn.Parameter(p.detach().to(dtype), requires_grad=False)
            for p in module._parameters.values():
                if p is not None:
                    p.requires_grad_(False)


def prepare(net: VisionTransformer, backend: str = "auto", dtype: str = "auto",
            device: torch.device | str | None = "cpu", warmup_batch: int | None = None) -> PreparedViT:
    """Make `net` an inference network for `backend` / `dtype` on `device`, in place; returns it.

    warmup_batch: with backend "compile", compile now on a zero batch of that size (224 px or the config's
    size) so that `net.runtime.compile_s` is known and the first real batch runs at speed.
    """
    backend, dtype_name, device = resolve(backend, dtype, device)
    if isinstance(net, PreparedViT):
        raise RuntimeError(f"this network is already prepared ({net.runtime}); prepare a freshly loaded one")
    dtype = TORCH_DTYPES[dtype_name]
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    net.to(device)
    packed = backend == "eager" and device.type == "cpu" and packing_available()
    if packed:
        _pack(net, dtype)
        _cast_rest(net, dtype)
    else:
        net.to(dtype)
    net.__class__ = PreparedViT
    net.runtime = RuntimeInfo(backend, dtype_name, str(device), packed)
    net._compiled = None
    if backend == "compile":
        options = {"freezing": True} if device.type == "cpu" else None  # freezing: constant-fold + pack weights
        compute = lambda pixels: VisionTransformer.forward_features(net, pixels.to(dtype))  # noqa: E731
        net._compiled = torch.compile(compute, dynamic=False, options=options)
        if warmup_batch:
            size = net.config.image_size
            net.forward_features(torch.zeros(warmup_batch, net.config.in_chans, size, size))
    return net
