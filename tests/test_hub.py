"""Hub ids resolve through the local Hugging Face cache, with no network.

A cache is built in a temporary folder in the standard layout (models--org--name/{blobs,refs/main,
snapshots/<commit>/...}) holding tiny transformers ViTs. vitkit runs in a subprocess whose environment
points huggingface_hub at it before import (HF_HUB_CACHE, HF_HUB_OFFLINE=1, and an unreachable
HF_ENDPOINT, so any network attempt fails instead of reaching the hub).

Run:  .venv/bin/python -m pytest tests/test_hub.py -q
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

CACHED = "vitkit-test/tiny-vit"
REGISTRY_CACHED = "google/vit-base-patch16-224"  # a registry name whose files in this cache are a tiny fake
NOT_CACHED = "vitkit-test/not-in-cache"
REGISTRY_NOT_CACHED = "facebook/deit-tiny-patch16-224"
LABELS = ("zero", "one", "two")

SCRIPT = r"""
import json, sys, torch
from vitkit.checkpoints.convert import load_network
x = torch.load(sys.argv[1])
results = {}
for name in sys.argv[2:]:
    try:
        loaded = load_network(name)
        with torch.no_grad():
            logits = loaded.net(x)
        results[name] = dict(ok=True, folder=loaded.source, width=loaded.net.config.width,
                             labels=list(loaded.net.labels), input_size=loaded.preprocess.input_size,
                             logits=logits.tolist(), provenance=loaded.provenance)
    except Exception as err:
        results[name] = dict(ok=False, type=type(err).__name__, message=str(err))
print("RESULTS " + json.dumps(results))
"""


def add_to_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """Put `folder`'s files in the cache as huggingface_hub does: content-addressed blobs, a snapshot of
    symlinks named by the commit, and refs/main holding that commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for src in sorted(folder.iterdir()):
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / src.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def tiny_vit(folder: Path, randomise, seed: int):
    config = transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
                                    image_size=32, patch_size=8, id2label=dict(enumerate(LABELS)),
                                    label2id={n: i for i, n in enumerate(LABELS)})
    model = randomise(transformers.ViTForImageClassification(config), seed=seed)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
        "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return model


@pytest.fixture(scope="module")
def hub(tmp_path_factory, randomise):
    """The fake cache, the reference logits of each cached model on one input, and a runner."""
    root = tmp_path_factory.mktemp("hub")
    cache, x = root / "hub-cache", torch.randn(2, 3, 32, 32)
    torch.save(x, root / "x.pt")
    expected = {}
    for seed, repo_id in enumerate((CACHED, REGISTRY_CACHED)):
        model = tiny_vit(root / f"src{seed}", randomise, seed)
        add_to_cache(cache, repo_id, root / f"src{seed}")
        with torch.no_grad():
            expected[repo_id] = model(pixel_values=x).logits
    (root / "cwd").mkdir()

    def run(names: list[str], offline: bool = True) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_HOME=str(root / "hf-home"), HF_HUB_CACHE=str(cache), HF_ENDPOINT="http://127.0.0.1:9",
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="2", HF_HUB_DOWNLOAD_TIMEOUT="2")
        if offline:
            env["HF_HUB_OFFLINE"] = "1"
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(root / "x.pt"), *names], cwd=root / "cwd",
                              env=env, capture_output=True, text=True, timeout=120)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
        assert proc.returncode == 0 and lines, proc.stdout + proc.stderr
        return json.loads(lines[-1].removeprefix("RESULTS "))

    return dict(cache=cache, expected=expected, run=run, sources={r: root / f"src{i}" for i, r in
                                                                 enumerate((CACHED, REGISTRY_CACHED))})


@pytest.fixture(scope="module")
def offline(hub):
    return hub["run"]([CACHED, REGISTRY_CACHED, NOT_CACHED, REGISTRY_NOT_CACHED], offline=True)


def assert_loaded_from_cache(result: dict, expected: torch.Tensor):
    """The weights exist only in the fake cache: equal logits mean they were read from it."""
    assert result["ok"], result
    diff = (torch.tensor(result["logits"]) - expected).abs().max().item()
    assert diff <= 1e-4, diff


def test_hub_id_loads_offline_from_cache(hub, offline):
    result = offline[CACHED]
    assert_loaded_from_cache(result, hub["expected"][CACHED])
    assert result["width"] == 48 and result["labels"] == list(LABELS) and result["input_size"] == 32


def test_registry_name_uses_the_cached_folder(hub, offline):
    """A registry name resolves through the same cache; the network and the preprocessing are what the
    folder's config.json and preprocessor_config.json describe (here a tiny 32 px ViT), not the registry's
    row (ViT-B/16 at 224), which is only a fallback for folders that say nothing."""
    result = offline[REGISTRY_CACHED]
    assert_loaded_from_cache(result, hub["expected"][REGISTRY_CACHED])
    assert result["width"] == 48 and result["labels"] == list(LABELS)
    assert result["input_size"] == 32


@pytest.mark.parametrize("name", [NOT_CACHED, REGISTRY_NOT_CACHED])
def test_missing_from_cache_offline_says_what_to_do(hub, offline, name):
    result = offline[name]
    assert not result["ok"] and result["type"] == "CheckpointError", result
    message = result["message"]
    for text in (name, "not in the local Hugging Face cache", str(hub["cache"]), "HF_HUB_OFFLINE",
                 f"hf download {name}", "local folder"):
        assert text in message, f"{text!r} missing from: {message}"


def test_no_network_without_offline_flag(hub):
    """HF_HUB_OFFLINE unset but the hub unreachable: a cached id still loads from the cache, an uncached
    one fails with the same guidance (the reason given is the unreachable hub)."""
    results = hub["run"]([CACHED, NOT_CACHED], offline=False)
    assert_loaded_from_cache(results[CACHED], hub["expected"][CACHED])
    failed = results[NOT_CACHED]
    assert not failed["ok"] and failed["type"] == "CheckpointError", failed
    for text in ("not in the local Hugging Face cache", "could not be reached", f"hf download {NOT_CACHED}"):
        assert text in failed["message"], failed["message"]


@pytest.mark.slow
def test_an_image_text_registry_name_runs_zero_shot_offline(tiny_image_text, colour_photos, tmp_path):
    """openai/clip-vit-base-patch32 from a cache whose files are a tiny CLIP that knows colours (weights, config,
    preprocessing and tokenizer files): `vitkit classify --labels` finds both towers and the tokenizer there."""
    cache = tmp_path / "hub-cache"
    add_to_cache(cache, "openai/clip-vit-base-patch32", tiny_image_text["clip"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_CACHE=str(cache), HF_ENDPOINT="http://127.0.0.1:9",
               HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1")
    photos = list(colour_photos)[::4]  # one of each colour
    proc = subprocess.run([sys.executable, "-m", "vitkit", "classify", *photos, "--model",
                           "openai/clip-vit-base-patch32", "--labels", "red,green,blue,yellow,purple,orange,white,black",
                           "--format", "jsonl", "--workers", "0", "--no-progress", "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["top_k"][0]["label"] for r in rows] == [colour_photos[p] for p in photos]


def test_a_pinned_revision_is_read_and_recorded_with_the_weights_sha256(hub):
    """org/name@COMMIT and @main read the cached snapshot; the provenance names the commit read and the sha256 of
    the weights file, which equals hashlib's over the file that was put in the cache; an unknown revision is a clear
    error, offline."""
    commit = hashlib.sha1(CACHED.encode()).hexdigest()  # add_to_cache's commit
    want = hashlib.sha256((hub["sources"][CACHED] / "model.safetensors").read_bytes()).hexdigest()
    results = hub["run"]([CACHED, f"{CACHED}@{commit}", f"{CACHED}@main", f"{CACHED}@v9-missing"])
    for name, revision in ((CACHED, None), (f"{CACHED}@{commit}", commit), (f"{CACHED}@main", "main")):
        assert_loaded_from_cache(results[name], hub["expected"][CACHED])
        found = results[name]["provenance"]
        assert found == {"revision": revision, "commit": commit, "sha256": {"model.safetensors": want}}, found
    missing = results[f"{CACHED}@v9-missing"]
    assert not missing["ok"] and "not in the local Hugging Face cache" in missing["message"]
