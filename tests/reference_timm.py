"""timm as the parity *reference* for tests -- with a torchvision stand-in when needed.

timm imports torchvision at module load, but vitkit must never depend on torchvision and some
machines have no usable build of it.  ``tests/stubs/torchvision`` is a TEST-ONLY stand-in that
provides just the names timm touches while importing and while building/running
``vision_transformer`` / ``deit`` / ``beit`` models (see its ``__init__`` docstring).

Rules:

* Only this module may put ``tests/stubs`` on ``sys.path``, and only while ``import timm`` runs
  (``torchvision_standin()``).  Afterwards the stand-in's modules are evicted from
  ``sys.modules`` and the directory from ``sys.path``: timm keeps its references, while other
  libraries' availability probes (e.g. transformers' ``is_torchvision_available()``, which is
  cached and would otherwise route image processors to a torchvision backend) see no torchvision.
* A real, importable torchvision always wins; the stand-in is used only when it is missing/broken.
* Never use this from ``vitkit`` itself.

Tiny reference builders (``tiny_vit``, ``tiny_deit_distilled``, ``tiny_beit``) return eval-mode
timm models whose every parameter holds deterministic (seeded), random, non-zero values --
including the ones timm initialises to zeros/constants (cls/dist tokens ~1e-6, biases 0,
LayerNorm 1/0, layer-scale gammas = init_values, BEiT q/v biases 0, relative position bias tables 0)
-- so that parity tests cannot pass trivially.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator, Optional

import torch
from torch import nn

STUBS_DIR = Path(__file__).resolve().parent / "stubs"

_using_standin: Optional[bool] = None  # None until import_timm() has run


def _purge(prefix: str) -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


def _real_torchvision_importable() -> bool:
    """True if a genuine torchvision imports cleanly (a broken build, e.g. missing ops, counts as absent)."""
    mod = sys.modules.get("torchvision")
    if mod is not None:
        return not getattr(mod, "IS_TEST_STANDIN", False)
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        mod = importlib.import_module("torchvision")
    except Exception:  # noqa: BLE001 - any failure (ImportError, RuntimeError for missing C++ ops, ...)
        _purge("torchvision")
        return False
    if getattr(mod, "IS_TEST_STANDIN", False):  # stand-in reachable through PYTHONPATH: not real
        _purge("torchvision")
        return False
    return True


@contextlib.contextmanager
def torchvision_standin() -> Iterator[None]:
    """TEST-ONLY: make ``tests/stubs/torchvision`` importable for the duration of the block.

    On exit the stubs directory is removed from ``sys.path`` and every stand-in ``torchvision*``
    module from ``sys.modules`` (objects already imported by timm stay alive through its
    references); any torchvision modules imported before the block are put back.
    """
    stubs = str(STUBS_DIR)
    saved = {n: m for n, m in sys.modules.items() if n == "torchvision" or n.startswith("torchvision.")}
    _purge("torchvision")  # a real torchvision already imported is shadowed only inside the block
    sys.path.insert(0, stubs)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        while stubs in sys.path:
            sys.path.remove(stubs)
        _purge("torchvision")
        sys.modules.update(saved)
        importlib.invalidate_caches()


def import_timm() -> ModuleType:
    """Import and return timm, through the torchvision stand-in if no real torchvision imports.

    Raises ``ImportError`` (with the reason) if timm itself is not installed, and ``RuntimeError``
    if timm is installed but fails to import through the stand-in (i.e. the stand-in is incomplete
    for this timm version -- a real failure, not something to skip).
    """
    global _using_standin
    timm = sys.modules.get("timm")  # a failed import never stays in sys.modules, so this one is complete
    if timm is not None:
        if _using_standin is None:  # imported elsewhere (or by a second copy of this module)
            fbn = getattr(sys.modules.get("timm.layers.create_norm"), "FrozenBatchNorm2d", None)
            _using_standin = bool(getattr(fbn, "IS_TEST_STANDIN", False))
        return timm
    if importlib.util.find_spec("timm") is None:
        raise ImportError(
            "timm is not installed; it is the parity reference for vitkit's tests "
            "(install it with `pip install timm --no-deps`)"
        )
    if _real_torchvision_importable():
        _using_standin = False
        return importlib.import_module("timm")
    # a previous plain `import timm` may have failed half-way on the missing torchvision
    _purge("timm")
    try:
        with torchvision_standin():
            timm = importlib.import_module("timm")
    except Exception as e:  # noqa: BLE001
        _purge("timm")
        raise RuntimeError(
            f"timm is installed but failed to import through the torchvision test stand-in "
            f"({STUBS_DIR / 'torchvision'}): {type(e).__name__}: {e}"
        ) from e
    _using_standin = True
    return timm


def using_standin() -> bool:
    """Whether timm was imported through the stand-in (imports timm first if needed)."""
    import_timm()
    return bool(_using_standin)


# --------------------------------------------------------------------------- randomisation


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite EVERY parameter of ``model`` with seeded random, non-zero values (in place).

    Buffers are untouched (e.g. BEiT's non-persistent ``k_bias`` stays zero by design and
    ``relative_position_index`` stays an index).  Scales keep activations well-conditioned:
      * norm weights (1-D ``*.weight``): 1 + 0.2 N(0,1)
      * layer-scale (``gamma*``):         U(0.05, 0.5)
      * matrices / convs:                 N(0,1) / sqrt(fan_in)
      * relative position bias tables:    0.5 N(0,1)   (per position & head, so a wrong index mapping shows)
      * tokens, pos_embed:                0.5 N(0,1)
      * every other 1-D param (biases, q/v biases): 0.1 N(0,1)
    Exact zeros (probability ~0) are nudged away from zero.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        r = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if "gamma" in leaf:
            v = torch.rand(p.shape, generator=g, dtype=torch.float32) * 0.45 + 0.05
        elif "relative_position_bias_table" in leaf:
            v = 0.5 * r
        elif leaf in ("cls_token", "dist_token", "reg_token", "pos_embed"):
            v = 0.5 * r
        elif p.ndim == 1 and leaf == "weight":
            v = 1.0 + 0.2 * r
        elif p.ndim >= 2:
            fan_in = math.prod(p.shape[1:])
            v = r / math.sqrt(fan_in)
        else:
            v = 0.1 * r
        v = torch.where(v == 0, torch.full_like(v, 1e-3), v)
        p.copy_(v.to(p.dtype))
    return model


def _finish(model: nn.Module, seed: int) -> nn.Module:
    return randomize_(model, seed).eval()


def _build(ctor, seed: int, **kwargs) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # timm's own init uses the global RNG; keep it untouched
        torch.manual_seed(seed)
        model = ctor(**kwargs)
    return _finish(model, seed)


def tiny_vit(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10, seed=0, **kw):
    """Randomised eval-mode ``timm.models.vision_transformer.VisionTransformer`` (timm defaults otherwise:
    class token, learned pos_embed incl. the class position, qkv_bias=True, final norm, token pooling)."""
    timm = import_timm()
    return _build(
        timm.models.vision_transformer.VisionTransformer, seed,
        img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
        num_heads=num_heads, num_classes=num_classes, **kw,
    )


def tiny_deit_distilled(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10,
                        seed=0, **kw):
    """Randomised eval-mode ``timm.models.deit.VisionTransformerDistilled`` (cls + dist tokens,
    eval output = mean of ``head(cls)`` and ``head_dist(dist)``)."""
    timm = import_timm()
    return _build(
        timm.models.deit.VisionTransformerDistilled, seed,
        img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
        num_heads=num_heads, num_classes=num_classes, **kw,
    )


def tiny_beit(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10, seed=0,
              use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1, **kw):
    """Randomised eval-mode ``timm.models.beit.Beit``; defaults mirror ``beit_base_patch16_224``
    (per-block relative position bias, no absolute pos_embed, layer-scale, mean pooling + fc_norm)."""
    timm = import_timm()
    return _build(
        timm.models.beit.Beit, seed,
        img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
        num_heads=num_heads, num_classes=num_classes, use_abs_pos_emb=use_abs_pos_emb,
        use_rel_pos_bias=use_rel_pos_bias, init_values=init_values, **kw,
    )


def create_reference(name: str, seed: Optional[int] = 0, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)`` in eval mode; never downloads weights.

    With ``seed`` (default 0) all parameters are re-randomised by ``randomize_``; ``seed=None``
    keeps timm's own initialisation.
    """
    timm = import_timm()
    if kwargs.pop("pretrained", False):
        raise ValueError("reference models are built with pretrained=False (no weight downloads in tests)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if seed is None else seed)
        model = timm.create_model(name, pretrained=False, **kwargs)
    if seed is not None:
        randomize_(model, seed)
    return model.eval()
