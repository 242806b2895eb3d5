"""Shared fixtures: a fixed seed for every test, a helper that randomises every parameter of a model,
and the path of the shared assets folder (../shared, absent in a fresh clone).

Run:  .venv/bin/python -m pytest tests -q
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global RNG state, whatever ran before it."""
    torch.manual_seed(0)


def randomise_(model: nn.Module, scale: float = 0.5, seed: int = 0) -> nn.Module:
    """Give EVERY parameter of `model` a random value, in place, and return the model in eval mode.

    A parity test with default initialisation cannot see a swapped bias, a dropped norm weight or an
    unused relative-position table (they are all zeros or ones); so:
      Linear / Conv weights   N(0, 1 / fan_in)  (keeps activations O(1) at any width and depth)
      LayerNorm weights       1 + 0.2 N(0, 1)   (non-unit)
      everything else         scale * N(0, 1)   (biases, tokens, positions, BEiT tables, layer-scale lambdas)
    """
    g = torch.Generator().manual_seed(seed)
    done: set[int] = set()

    def put(p: torch.Tensor, value: torch.Tensor) -> None:
        p.copy_(value.to(p.dtype))
        done.add(id(p))

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm) and module.weight is not None:
                put(module.weight, 1 + 0.2 * torch.randn(module.weight.shape, generator=g))
            elif isinstance(module, (nn.Linear, nn.Conv2d)):
                fan_in = module.weight[0].numel()
                put(module.weight, torch.randn(module.weight.shape, generator=g) / math.sqrt(fan_in))
        for p in model.parameters():
            if id(p) not in done:
                put(p, scale * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="session")
def randomise():
    """The `randomise_(model, scale=0.5, seed=0)` helper, as a fixture."""
    return randomise_


_REPORT: list[str] = []


@pytest.fixture(scope="session")
def report():
    """`report("...")`: a measured figure that belongs in the run's output (accuracy, agreement, speed);
    the lines are printed in pytest's closing summary, even under -q."""
    return _REPORT.append


def pytest_terminal_summary(terminalreporter):
    if _REPORT:
        terminalreporter.section("vitkit measurements")
        for line in _REPORT:
            terminalreporter.write_line(line)
