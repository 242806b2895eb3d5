"""CLIP's and SigLIP's text towers: vitkit against transformers on the same random weights, in one process.

    .venv/bin/python benchmarks/text_tower.py              # CLIP ViT-B/32's text tower, SigLIP-B/16's
    .venv/bin/python benchmarks/text_tower.py --quick

What is timed (texts/s, medians of interleaved rounds that each wait for a quiet machine):
  transformers   CLIPTextModelWithProjection / SiglipTextModel (sdpa attention, fp32) on the tokenizer's full
                 context (77 / 64 ids), as its processor pads them for batches (padding="max_length")
                 and, for CLIP, padded to the batch's longest text (padding="longest"; CLIP's output does not
                 change, SigLIP's would: it was trained on max_length padding)
  vitkit         TextEncoder.embed: the same weights; a causal tower (CLIP) stops after the batch's last end
                 token, SigLIP reads every position
on prompts like zero-shot's ("a photo of a {label}."), batch 64; and the max abs difference of the embeddings.
Then the time a 1000-class x 80-template label set (ImageNet zero-shot) takes here, extrapolated from that rate.

The texts are tokenized by a CLIP vocabulary built from open_clip's bundled BPE file (tests/image_text_support.py)
for CLIP, and by a small SentencePiece model for SigLIP (its ids only shape the input; the tower is full size).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

LABELS = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray", "stingray", "cock",
          "hen", "ostrich", "brambling", "goldfinch", "house finch", "junco", "indigo bunting", "robin"]


def _towers(family: str, folder: Path):
    import transformers

    from image_text_support import clip_vocabulary, sentencepiece_vocabulary

    from conftest import randomise_
    from vitkit.image_text import load_text

    if family == "clip":
        config = transformers.CLIPConfig(text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                                                          num_attention_heads=8, hidden_act="quick_gelu"),
                                         vision_config=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                                            intermediate_size=128, image_size=32, patch_size=16),
                                         projection_dim=512)
        model, vocab = transformers.CLIPModel(config), clip_vocabulary(folder / "vocab")
    else:
        vocab = sentencepiece_vocabulary(folder / "vocab")
        config = transformers.SiglipConfig(text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                            num_attention_heads=12, vocab_size=32000),
                                           vision_config=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                                              intermediate_size=128, image_size=32, patch_size=16))
        model = transformers.SiglipModel(config)
    randomise_(model).save_pretrained(folder / "model")
    for path in vocab.iterdir():
        (folder / "model" / path.name).write_bytes(path.read_bytes())
    (folder / "model" / "preprocessor_config.json").write_text('{"image_processor_type": "CLIPImageProcessor"}')
    hf = transformers.AutoModel.from_pretrained(folder / "model", attn_implementation="sdpa").eval()
    return hf, load_text(str(folder / "model"))


def _rate(fn, texts: list[str], seconds: float) -> float:
    start, n = time.perf_counter(), 0
    while n < 2 or time.perf_counter() - start < seconds:
        fn(texts)
        n += 1
    return n * len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    from vitkit.runtime.measure import wait_quiet

    rounds, seconds = (2, 1.0) if args.quick else (5, 2.0)
    texts = [f"a photo of a {label}." for label in LABELS] * 4  # batch 64
    for family in ("clip", "siglip"):
        with tempfile.TemporaryDirectory() as tmp:
            hf, text = _towers(family, Path(tmp))

            @torch.inference_mode()
            def reference(batch: list[str]):
                out = hf.get_text_features(input_ids=text.tokenizer(batch))
                return getattr(out, "pooler_output", out)

            @torch.inference_mode()
            def reference_longest(batch: list[str]):  # padding="longest" (for SigLIP that changes its output)
                ids = text.tokenizer(batch)
                keep = int((ids != text.tokenizer.pad_id).sum(dim=1).max()) + 1
                out = hf.get_text_features(input_ids=ids[:, :min(keep, ids.shape[1])])
                return getattr(out, "pooler_output", out)

            diff = (torch.nn.functional.normalize(reference(texts), dim=-1) - text.embed(texts)).abs().max().item()
            runners = {"transformers sdpa": reference, "vitkit": text.embed}
            if family == "clip":
                runners["transformers sdpa, longest"] = reference_longest
            for fn in runners.values():
                fn(texts)
            rates = {name: [] for name in runners}
            for _ in range(rounds):
                wait_quiet(max_wait_s=30)
                for name, fn in runners.items():
                    rates[name].append(_rate(fn, texts, seconds))
            median = {name: statistics.median(v) for name, v in rates.items()}
            ratio = statistics.median(a / b for a, b in zip(rates["vitkit"], rates["transformers sdpa"]))
            longest = ""
            if "transformers sdpa, longest" in rates:
                r = statistics.median(a / b for a, b in zip(rates["vitkit"], rates["transformers sdpa, longest"]))
                longest = f"; transformers padded to the longest text {median['transformers sdpa, longest']:.0f} ({r:.2f}x)"
            print(f"{family}: texts/s transformers {median['transformers sdpa']:.0f}, vitkit {median['vitkit']:.0f} "
                  f"({ratio:.2f}x){longest}; max |diff| of normalised embeddings {diff:.1e}; 1000 x 80 ImageNet prompts: "
                  f"{80_000 / median['vitkit']:.0f} s here (transformers {80_000 / median['transformers sdpa']:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
