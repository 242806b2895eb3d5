"""Hugging Face hub id -> a local folder, through huggingface_hub and its cache. The only module that
touches a network; with HF_HUB_OFFLINE=1 (or no network) it uses the cache alone.

Try it:  HF_HUB_OFFLINE=1 python -c "from vitkit.checkpoints.hub import fetch; fetch('google/vit-base-patch16-224')"
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vitkit.checkpoints.io import CheckpointError

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
METADATA = ["config.json", "preprocessor_config.json", "open_clip_config.json",
            # image-text models' tokenizers (see vitkit.data.tokenize)
            "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
            "spiece.model"]
SAFETENSORS = ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
               "open_clip_model.safetensors"]
PICKLES = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]


def looks_like_hub_id(text: str) -> bool:
    return bool(HUB_ID.match(text)) and not os.path.exists(text)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def fetch(repo_id: str, revision: str | None = None) -> Path:
    """Download (or find in the cache) the config and weights of `repo_id`; safetensors when published,
    else the pickle .bin (which vitkit loads with weights_only=True)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=METADATA + SAFETENSORS,
                                        local_files_only=_offline()))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=METADATA + PICKLES,
                                            local_files_only=_offline()))
    except (LocalEntryNotFoundError, OSError) as err:
        raise CheckpointError(_unreachable(repo_id, err)) from err
    except (RepositoryNotFoundError, HFValidationError) as err:
        raise CheckpointError(f"{repo_id} is not a model on the Hugging Face hub: {err}") from err
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise CheckpointError(_unreachable(repo_id, None) if _offline() else
                              f"{repo_id} publishes no model.safetensors or pytorch_model.bin")
    return folder


def _unreachable(repo_id: str, err: Exception | None) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    why = "HF_HUB_OFFLINE is set" if _offline() else f"the hub could not be reached ({type(err).__name__})"
    return (
        f"{repo_id} is not in the local Hugging Face cache ({HF_HUB_CACHE}) and {why}. On a machine with "
        f"internet run `hf download {repo_id}` (or `huggingface-cli download {repo_id}`) and copy the cache "
        f"folder here, or pass a local folder or weights file with --model PATH."
    )
