"""README.md model cards in the Hugging Face layout, for the models vitkit makes (`vitkit finetune`, `vitkit quantize`):
a YAML header (library_name, base_model, license, pipeline_tag, tags, metrics) that the hub and
`huggingface_hub.ModelCard` read, then what the model is, the data, the recipe, the measured metrics, and how to load
it in vitkit, transformers and timm.

Try it:  python -c "from vitkit.checkpoints.model_card import model_card; print(model_card(title='t', \
base_model='google/vit-base-patch16-224', summary='s', recipe={'lr': 1e-4}, metrics={'val top-1': 0.9}))"
"""

from __future__ import annotations

import json
from pathlib import Path

from vitkit.checkpoints.io import write_atomic_text
from vitkit.models.registry import MODELS

# how the registry spells a licence -> the hub's license identifiers
HUB_LICENCES = {"apache-2.0": "apache-2.0", "mit": "mit", "cc-by-nc-4.0": "cc-by-nc-4.0", "bsd-3-clause": "bsd-3-clause"}


def base_licence(base_model: str | None) -> str:
    """The base checkpoint's licence when vitkit's registry knows it (its name or hub id), else "other"."""
    for name, entry in MODELS.items():
        if base_model in (name, entry.hub_id):
            return HUB_LICENCES.get(entry.licence.lower(), "other")
    return "other"


def _yaml_value(value) -> str:
    return json.dumps(value)  # JSON scalars and lists are YAML


def model_card(*, title: str, base_model: str | None, summary: str, recipe: dict, metrics: dict[str, float],
               pipeline_tag: str = "image-classification", how_to_load: dict[str, str] | None = None,
               notes: list[str] | None = None) -> str:
    """The card's text. `metrics`: name -> value (fractions are printed as percentages in the body)."""
    licence = base_licence(base_model)
    header = {"library_name": "vitkit", "pipeline_tag": pipeline_tag, "license": licence,
              "tags": ["vision", "vit", "vitkit", pipeline_tag]}
    if base_model:
        header["base_model"] = base_model
    lines = ["---", *(f"{k}: {_yaml_value(v)}" for k, v in header.items()), "---", "", f"# {title}", "", summary, ""]
    lines += ["## Base model", "", f"`{base_model}`" if base_model else "none (trained from random weights)",
              "" if licence != "other" else "\nThe licence of the base checkpoint applies: see its own model card.",
              "", "## Recipe", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in recipe.items()]
    lines += ["", "## Metrics (measured by vitkit when this model was made)", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {100 * v:.2f}% |" if isinstance(v, float) and 0 <= v <= 1 else f"| {k} | {v} |"
              for k, v in metrics.items()]
    if notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    lines += ["", "## How to load it", ""]
    for where, code in (how_to_load or {}).items():
        lines += [f"{where}:", "", "```python", code, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def hf_folder_loading(folder: str, arch: str | None, num_classes: int) -> dict[str, str]:
    """How to load a transformers folder written by vitkit, in vitkit, transformers and (given its timm
    architecture name) timm."""
    how = {
        "vitkit": f'import vitkit\nmodel = vitkit.load("{folder}")\nmodel.classify("photo.jpg", top_k=5)',
        "transformers": ("from transformers import AutoImageProcessor, AutoModelForImageClassification\n"
                         f'processor = AutoImageProcessor.from_pretrained("{folder}")\n'
                         f'model = AutoModelForImageClassification.from_pretrained("{folder}")'),
    }
    if arch:
        how[f"timm (first `vitkit convert {folder} --to timm --out model-timm.safetensors`)"] = (
            f'import timm\nmodel = timm.create_model("{arch}", num_classes={num_classes}, '
            'checkpoint_path="model-timm.safetensors")')
    return how


def write_model_card(folder: str | Path, text: str) -> Path | None:
    """README.md in `folder`, unless a README.md that vitkit did not write is already there (it is left alone:
    -> None)."""
    target = Path(folder) / "README.md"
    if target.is_file() and 'library_name: "vitkit"' not in target.read_text(errors="replace")[:2000]:
        return None
    write_atomic_text(text, target)
    return target


def onnx_loading(path: str) -> dict[str, str]:
    """How to run an ONNX file written by vitkit: in vitkit, or with onnxruntime alone (the edge script)."""
    return {"vitkit": f'import vitkit\nmodel = vitkit.load("{path}")   # preprocessing and labels from the file\n'
                      'model.classify("photo.jpg", top_k=5)',
            "onnxruntime only": f"python examples/edge_classify.py --model {path} photo.jpg"}
