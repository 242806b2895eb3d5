"""Declarative key maps between a foreign checkpoint layout and vitkit's own state-dict layout.

A `KeyMap` is a list of rules written as templates on both sides, e.g.
    Rename("encoder.layer.{i}.layernorm_before.{p}", "blocks.{i}.norm1.{p}")
    Fuse(("…query.{p}", "…key.{p}", "…value.{p}"), "blocks.{i}.attn.qkv.{p}")
so one table serves loading (foreign -> native) and saving (native -> foreign). Every key must be
claimed by a rule, by the `ignore` allow-list, or by `passthrough`; anything else is an error that names it.

Try it:  python -m pytest tests/test_keymap.py -q
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from vitkit.checkpoints.io import CheckpointError
from vitkit.config import ViTConfig

Convert = Callable[[torch.Tensor, ViTConfig], torch.Tensor]
PLACEHOLDERS = {"i": r"\d+", "p": r"weight|bias"}


def _same(t: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    return t


@dataclass(frozen=True)
class Transform:
    """A tensor change and its inverse (e.g. a transpose, a reshape of per-head JAX kernels)."""

    to_native: Convert = _same
    to_foreign: Convert = _same


IDENTITY = Transform()


@dataclass(frozen=True)
class Template:
    text: str
    regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        parts = re.split(r"\{(\w+)\}", self.text)
        pattern = "".join(re.escape(p) if n % 2 == 0 else f"(?P<{p}>{PLACEHOLDERS[p]})" for n, p in enumerate(parts))
        object.__setattr__(self, "regex", re.compile(pattern + r"\Z"))

    def match(self, key: str) -> dict[str, str] | None:
        m = self.regex.match(key)
        return m.groupdict() if m else None

    def fill(self, groups: dict[str, str]) -> str:
        return self.text.format(**groups)


@lru_cache(maxsize=None)
def _t(text: str) -> Template:
    return Template(text)


@dataclass(frozen=True)
class Rename:
    foreign: str
    native: str
    transform: Transform = IDENTITY


@dataclass(frozen=True)
class Fuse:
    """Several foreign tensors concatenated along `dim` into one native tensor (q, k, v -> qkv)."""

    foreign: tuple[str, ...]
    native: str
    transform: Transform = IDENTITY  # applied to each part
    dim: int = 0
    ratios: tuple[int, ...] | None = None  # relative part sizes when they differ (q, kv -> qkv: (1, 2))

    def split(self, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The native tensor back into its foreign parts."""
        if self.ratios is None:
            return value.chunk(len(self.foreign), dim=self.dim)
        unit = value.shape[self.dim] // sum(self.ratios)
        return value.split([unit * r for r in self.ratios], dim=self.dim)


Rule = Rename | Fuse


@dataclass(frozen=True)
class KeyMap:
    name: str
    rules: tuple[Rule, ...]
    ignore: tuple[str, ...] = ()  # foreign keys dropped on load (regexes), e.g. derived index buffers
    passthrough: bool = False  # keys no rule claims keep their name (layouts that mostly equal vitkit's)

    def to_native(self, tensors: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
        out, parts, unclaimed = {}, {}, []
        for key, value in tensors.items():
            if any(re.search(pattern, key) for pattern in self.ignore):
                continue
            claimed = self._claim(key, value, cfg, out, parts)
            if not claimed:
                if self.passthrough:
                    out[key] = value
                else:
                    unclaimed.append(key)
        if unclaimed:
            raise CheckpointError(f"{self.name} layout: unexpected keys {short(unclaimed)}")
        for (rule, native), (groups, found) in parts.items():
            missing = [_t(rule.foreign[n]).fill(groups) for n in range(len(rule.foreign)) if n not in found]
            if missing:
                raise CheckpointError(f"{self.name} layout: {native} needs {missing} too")
            out[native] = torch.cat([found[n] for n in range(len(rule.foreign))], dim=rule.dim)
        return out

    def _claim(self, key, value, cfg, out, parts) -> bool:
        for rule in self.rules:
            if isinstance(rule, Rename):
                groups = _t(rule.foreign).match(key)
                if groups is not None:
                    out[_t(rule.native).fill(groups)] = rule.transform.to_native(value, cfg)
                    return True
            else:
                for n, foreign in enumerate(rule.foreign):
                    groups = _t(foreign).match(key)
                    if groups is not None:
                        native = _t(rule.native).fill(groups)
                        parts.setdefault((rule, native), (groups, {}))[1][n] = rule.transform.to_native(value, cfg)
                        return True
        return False

    def to_foreign(self, tensors: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
        out, unclaimed = {}, []
        for key, value in tensors.items():
            for rule in self.rules:
                groups = _t(rule.native).match(key)
                if groups is None:
                    continue
                if isinstance(rule, Rename):
                    out[_t(rule.foreign).fill(groups)] = rule.transform.to_foreign(value, cfg)
                else:
                    for foreign, chunk in zip(rule.foreign, rule.split(value)):
                        out[_t(foreign).fill(groups)] = rule.transform.to_foreign(chunk, cfg)
                break
            else:
                if self.passthrough:
                    out[key] = value
                else:
                    unclaimed.append(key)
        if unclaimed:
            raise CheckpointError(f"{self.name} layout has no place for {short(unclaimed)}")
        return out


def short(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f" … and {len(keys) - limit} more" if len(keys) > limit else "")
