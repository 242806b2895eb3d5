"""Test stand-in for ``torchvision.ops.misc``: timm imports ``FrozenBatchNorm2d`` at load time
(for ``isinstance`` checks and opt-in BN freezing); it is never instantiated on ViT/DeiT/BEiT paths."""
from .. import _missing, _placeholder

FrozenBatchNorm2d = _placeholder("ops.misc.FrozenBatchNorm2d")

__getattr__ = _missing(__name__)
