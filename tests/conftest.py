"""Shared fixtures: a fixed seed for every test, a helper that randomises every parameter of a model,
and the path of the shared assets folder (../shared, absent in a fresh clone).

Run:  .venv/bin/python -m pytest tests -q
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from vitkit.config import BEIT_FIELDS, ViTConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# Tiny versions of every model variant (milliseconds each), for tests that must cover them all
TINY = dict(image_size=32, patch_size=8, width=48, depth=2, heads=3, mlp_dim=96, num_classes=10)
TINY_VARIANTS = {
    "vit": ViTConfig(**TINY),
    "deit_distilled": ViTConfig(**TINY, dist_token=True, family="deit"),
    "beit": ViTConfig(**TINY, **BEIT_FIELDS),
    "beit_shared_rel_pos": ViTConfig(**TINY, **{**BEIT_FIELDS, "rel_pos_bias": "shared"}),
    "pre_logits": ViTConfig(**TINY, pre_logits_dim=32),
    "backbone": ViTConfig(**{**TINY, "num_classes": 0}),
}
TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.fixture(autouse=True, scope="session")
def _feature_cache(tmp_path_factory):
    """The linear probe's feature cache goes to a temporary folder, never to the user's ~/.cache."""
    previous = os.environ.get("VITKIT_CACHE_DIR")
    os.environ["VITKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("vitkit-cache"))
    yield
    if previous is None:
        os.environ.pop("VITKIT_CACHE_DIR", None)
    else:
        os.environ["VITKIT_CACHE_DIR"] = previous


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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`), as subprocesses get
    with OMP_NUM_THREADS=1: tiny batches only lose from a second thread on 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_image_text(tmp_path_factory) -> dict[str, Path]:
    """family ("clip", "siglip") -> a transformers folder of a tiny image-text model trained (a few seconds) to tie
    pictures of solid colours to their names, with a real tokenizer (tests/image_text_support.py)."""
    pytest.importorskip("tokenizers")
    from image_text_support import clip_vocabulary, sentencepiece_vocabulary, train_image_text

    root = tmp_path_factory.mktemp("image-text")
    try:
        vocabularies = {"clip": clip_vocabulary(root / "clip-vocab"), "siglip": sentencepiece_vocabulary(root / "spm")}
    except ImportError as err:
        pytest.skip(f"the test's tokenizer vocabularies cannot be built: {err}")
    return {family: train_image_text(family, vocab, root / family) for family, vocab in vocabularies.items()}


@pytest.fixture(scope="session")
def colour_photos(tmp_path_factory) -> dict[str, str]:
    """path -> colour, for 4 photos of each of 8 colours (PNG, JPEG, WebP; 20-90 px, not square)."""
    from image_text_support import write_colour_photos

    return write_colour_photos(tmp_path_factory.mktemp("colour-photos"), per_colour=4)


def torchrun(args: list, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2 --standalone ARGS` with one thread a rank and no inherited rank variables."""
    command = [str(TORCHRUN), "--nproc-per-node", "2", "--standalone", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    try:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{' '.join(command)} ran past {timeout} s:\n{err.stderr}")


@pytest.fixture(scope="session")
def can_torchrun(tmp_path_factory):
    """Two gloo ranks that all-reduce a number, or a skip that says why not."""
    if not TORCHRUN.is_file():
        pytest.skip(f"torchrun not found at {TORCHRUN}")
    work = tmp_path_factory.mktemp("preflight")
    (work / "ranks.py").write_text(
        "import torch, torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "t = torch.tensor([dist.get_rank() + 1.0]); dist.all_reduce(t)\n"
        "assert t.item() == 3.0, t\n"
        "dist.destroy_process_group()\n")
    try:
        result = torchrun([work / "ranks.py"], work, timeout=60)
    except pytest.fail.Exception as err:
        pytest.skip(f"torchrun cannot run two gloo ranks here: {err}")
    if result.returncode:
        pytest.skip(f"torchrun cannot run two gloo ranks here (exit {result.returncode}): {result.stderr[-1500:]}")


# a `python -c` program that runs the vitkit CLI with every optimizer step slowed by 0.15 s, so that a test can SIGKILL
# a fine-tuning or distillation run mid-epoch (vitkit.cli's arguments follow it)
SLOW_STEP = ("import sys, time\n"
             "from vitkit.train import trainer\n"
             "step = trainer.Trainer._step\n"
             "trainer.Trainer._step = lambda self, batches: (time.sleep(0.15), step(self, batches))[1]\n"
             "from vitkit.cli import main\n"
             "sys.exit(main(sys.argv[1:]))\n")


def sigkill_when(proc: subprocess.Popen, ready, what: str, log: Path, timeout: float = 90) -> None:
    """SIGKILL `proc` as soon as `ready()` is true (polled every 5 ms); the test fails, with `log`'s text, if the
    process ends first or `what` has not happened after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"not {what} after {timeout} s:\n{log.read_text()}")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
