"""Exponential moving average of a network's weights, evaluated and saved in place of the raw weights when
enabled (`--ema 0.9998`).

Try it:  python -m pytest tests/test_train_optim.py -q -k ema
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, net: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.net = copy.deepcopy(net).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        for avg, current in zip(self.net.state_dict().values(), net.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.lerp_(current.detach(), 1.0 - self.decay)

    def state_dict(self) -> dict:
        return self.net.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state)
