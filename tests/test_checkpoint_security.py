"""Pickle is code: a .pth/.bin that would run code when unpickled is refused (torch.load with
weights_only=True), and nothing from it runs; plain state dicts and training checkpoints still load.

Run:  .venv/bin/python -m pytest tests/test_checkpoint_security.py -q
"""

from __future__ import annotations

import pytest
import torch

from vitkit.checkpoints.convert import load_network
from vitkit.checkpoints.io import CheckpointError, read_tensors

ARCH = "deit_tiny_patch16_224"


class Payload:
    """Unpickling this calls exec(...), which writes `marker`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran while loading a checkpoint')",)


@pytest.fixture(scope="module")
def state_dict(randomise):
    """A timm-layout state dict of the architecture, every tensor random."""
    return {k: v.clone() for k, v in randomise(load_network(None, arch=ARCH).net).state_dict().items()}


def _evil_objects(marker, sd):
    return {
        "payload-only": Payload(marker),
        "payload-in-state-dict": {**sd, "evil": Payload(marker)},
        "payload-in-training-checkpoint": {"model": sd, "epoch": 3, "hook": Payload(marker)},
    }


EVIL = [(kind, suffix, zipfile) for kind in ("payload-only", "payload-in-state-dict", "payload-in-training-checkpoint")
        for suffix, zipfile in ((".pth", True), (".bin", True), (".pth", False))]


@pytest.mark.parametrize("kind, suffix, zipfile", [
    pytest.param(*case, id=f"{case[0]}{case[1]}{'' if case[2] else '-legacy-format'}") for case in EVIL])
def test_code_in_pickle_is_refused(kind, suffix, zipfile, tmp_path, state_dict):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    torch.save(_evil_objects(marker, state_dict)[kind], path, _use_new_zipfile_serialization=zipfile)

    for load in (lambda: read_tensors(path), lambda: load_network(str(path), arch=ARCH)):
        with pytest.raises(CheckpointError) as err:
            load()
        message = str(err.value)
        assert "refused" in message and "weights_only" in message, message
        assert str(path) in message
        assert not marker.exists(), "the checkpoint's code ran"

    # the payload is live: an unsafe load does run it (so the assertion above could have failed)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".pt"])
def test_plain_state_dict_loads(suffix, tmp_path, state_dict):
    path = tmp_path / f"weights{suffix}"
    torch.save(state_dict, path)
    assert read_tensors(path).keys() == state_dict.keys()
    loaded = load_network(str(path), arch=ARCH)
    assert loaded.layout == "timm"
    assert_same_weights(loaded.net, state_dict)


@pytest.mark.parametrize("wrapper", ["model", "state_dict", "model-ddp-prefix"])
def test_training_checkpoint_loads(wrapper, tmp_path, state_dict):
    if wrapper == "model-ddp-prefix":  # DistributedDataParallel names every key module.<name>
        checkpoint = {"model": {f"module.{k}": v for k, v in state_dict.items()}, "epoch": 3}
    else:
        checkpoint = {wrapper: state_dict, "epoch": 3, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    assert read_tensors(path).keys() == state_dict.keys()
    assert_same_weights(load_network(str(path), arch=ARCH).net, state_dict)


def test_legacy_format_state_dict_loads(tmp_path, state_dict):
    """Pre-1.6 (non-zip) files cannot be memory-mapped; they still load, weights only."""
    path = tmp_path / "legacy.pth"
    torch.save(state_dict, path, _use_new_zipfile_serialization=False)
    assert_same_weights(load_network(str(path), arch=ARCH).net, state_dict)


def assert_same_weights(net, expected):
    got = net.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
