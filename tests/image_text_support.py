"""TEST-ONLY tiny image-text models that know something: a CLIP (causal text tower, softmax loss) or a SigLIP
(bidirectional, sigmoid loss) trained for a few seconds to tie pictures of solid colours to the colours' names,
saved as a transformers CLIPModel / SiglipModel folder with a real tokenizer beside it (CLIP's own 49,152-merge
BPE vocabulary, shipped inside open_clip_torch; for SigLIP a SentencePiece model trained here), and photos of
the colours written as image files with noise, odd sizes and mixed formats.

Used by tests/test_zero_shot.py, the index and service tests.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitkit.checkpoints.save import save_image_text_hf
from vitkit.config import HALF, PreprocessSpec, TextConfig, ViTConfig
from vitkit.data.tokenize import load_tokenizer
from vitkit.models.text import TextTransformer
from vitkit.models.vit import VisionTransformer

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 40),
           "purple": (130, 40, 160), "orange": (250, 140, 20), "white": (245, 245, 245), "black": (15, 15, 15)}
CAPTIONS = ("{}", "a {} square", "a photo of a {} thing", "something {}", "the colour {}", "a {} picture")
SPEC = PreprocessSpec(input_size=32, crop_pct=1.0, resize_mode="exact", interpolation="bilinear", mean=HALF, std=HALF)
CONTEXT = 16


def clip_vocabulary(folder: Path, config: bool = True) -> Path:
    """vocab.json + merges.txt (+ tokenizer_config.json) of OpenAI's CLIP BPE, from open_clip's bundled file as its
    SimpleTokenizer builds them: lines 1..48894 are the merges; the vocabulary is the 256 byte characters, the same
    + "</w>", the merges joined, then the two special tokens (49,408 entries)."""
    from reference_openclip import bare_openclip

    bpe = Path(bare_openclip().__path__[0]) / "bpe_simple_vocab_16e6.txt.gz"  # ImportError when not installed
    merges = gzip.open(bpe, "rt", encoding="utf-8").read().split("\n")[1:49152 - 256 - 2 + 1]
    byte_chars = _bytes_to_unicode()
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    if not config:
        return folder
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "model_max_length": 77}))
    return folder


def _bytes_to_unicode() -> list[str]:
    """GPT-2's reversible byte -> printable character table, in CLIP's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def sentencepiece_vocabulary(folder: Path) -> Path:
    """A small SentencePiece unigram model (SigLIP's kind: </s> = 1, <unk> = 2, pad = </s>) trained on captions
    (at most 64 pieces: the corpus holds fewer)."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    lines = [caption.format(name) for name in COLOURS for caption in CAPTIONS] * 4
    lines += ["a photo of a dog on a beach", "an image of many things", "the quick brown fox jumps over it"] * 8
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=64,
                                   hard_vocab_limit=False, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, minloglevel=2)
    corpus.unlink()
    (folder / "spiece.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "SiglipTokenizer", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
        "model_max_length": CONTEXT}))
    return folder


def _vocab_size(folder: Path) -> int:
    if (folder / "tokenizer.json").is_file():  # Gemma-style: the highest id + 1
        data = json.loads((folder / "tokenizer.json").read_text())
        return 1 + max([*data["model"]["vocab"].values(), *(t["id"] for t in data["added_tokens"])])
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(folder / "spiece.model")).get_piece_size()


def gemma_vocabulary(folder: Path) -> Path:
    """A small Gemma-style tokenizer.json (SigLIP 2's kind: byte-fallback BPE, <pad> 0 <eos> 1 <bos> 2 <unk> 3),
    from a SentencePiece BPE model trained on the captions and converted by transformers."""
    import sentencepiece as spm
    import transformers

    source = folder.parent / (folder.name + "-spm")
    source.mkdir(parents=True, exist_ok=True)
    lines = [caption.format(name) for name in COLOURS for caption in CAPTIONS] * 4
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(source / "tokenizer"),
                                   model_type="bpe", vocab_size=330, hard_vocab_limit=False, pad_id=0, eos_id=1,
                                   bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
                                   byte_fallback=True, minloglevel=2)
    transformers.GemmaTokenizer.from_pretrained(source).save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("vocab_file", None)
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "GemmaTokenizer"}))
    return folder


def colour_pixels(names: list[str], generator: torch.Generator) -> torch.Tensor:
    """(N, 3, 32, 32) normalised pictures of the colours: brightness jitter and pixel noise."""
    rgb = torch.tensor([COLOURS[n] for n in names], dtype=torch.float32) / 255  # (N, 3)
    scale = 1 + 0.15 * (torch.rand(len(names), 1, generator=generator) - 0.5)
    base = (rgb * scale).clamp(0, 1)[:, :, None, None]  # (N, 3, 1, 1)
    pixels = (base + 0.05 * torch.randn(len(names), 3, 32, 32, generator=generator)).clamp(0, 1)
    return (pixels - 0.5) / 0.5


def train_image_text(family: str, tokenizer_folder: Path, out: Path, steps: int = 160, seed: int = 0,
                     kind: str | None = None) -> Path:
    """A tiny CLIP ('clip') or SigLIP ('siglip') tied to the colours, saved as a transformers folder; `kind`: the
    tokenizer's (default: the family's; 'siglip2' for a Gemma tokenizer.json)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    siglip = family == "siglip"
    vision = VisionTransformer(ViTConfig(
        image_size=32, patch_size=8, width=48, depth=2, heads=3, mlp_dim=96, num_classes=0, norm_eps=1e-6 if siglip
        else 1e-5, act="gelu_tanh" if siglip else "quick_gelu", family=family,
        **(dict(class_token=False, pool="map") if siglip else dict(pre_norm=True, patch_bias=False, proj_dim=32))))
    tokenizer = load_tokenizer(tokenizer_folder, kind or family, CONTEXT)
    text = TextTransformer(TextConfig(
        vocab_size=_vocab_size(tokenizer_folder) if siglip else 49408, context_length=CONTEXT, width=32, depth=2, heads=2, mlp_dim=64,
        act="gelu_tanh" if siglip else "quick_gelu", norm_eps=1e-6 if siglip else 1e-5, causal=not siglip,
        pool="last" if siglip else "eos", eos_id=tokenizer.eos_id, proj_dim=48 if siglip else 32, proj_bias=siglip,
        logit_bias=siglip, family=family))
    params = list(vision.parameters()) + list(text.parameters())
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    names = list(COLOURS)
    for _ in range(steps):
        order = [names[i] for i in torch.randperm(len(names), generator=g).tolist()]  # every colour once
        captions = [CAPTIONS[int(torch.randint(len(CAPTIONS), (1,), generator=g))].format(n) for n in order]
        images = vision.forward_head(vision.forward_features(colour_pixels(order, g)), pre_logits=True)
        logits = text.logits(images, text(tokenizer(captions)))  # (8, 8): image i belongs with caption i
        target = torch.arange(len(order))
        if siglip:  # sigmoid loss: +1 on the diagonal, -1 elsewhere
            labels = 2 * torch.eye(len(order)) - 1
            loss = -torch.nn.functional.logsigmoid(labels * logits).sum() / len(order)
        else:
            loss = (torch.nn.functional.cross_entropy(logits, target)
                    + torch.nn.functional.cross_entropy(logits.T, target)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return save_image_text_hf(vision.eval(), text.eval(), SPEC, out, tokenizer_folder)


def write_colour_photos(folder: Path, per_colour: int = 4, seed: int = 1) -> dict[str, str]:
    """Image files of the colours (PNG, JPEG and WebP, sizes from 20 to 90 px, not square): path -> colour."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for name, rgb in COLOURS.items():
        for n in range(per_colour):
            w, h = (int(v) for v in rng.integers(20, 90, size=2))
            pixels = np.clip(np.array(rgb) * rng.uniform(0.92, 1.08) + rng.normal(0, 10, (h, w, 3)), 0, 255)
            path = folder / f"{name}_{n}.{('png', 'jpg', 'webp')[n % 3]}"
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            truth[str(path)] = name
    return truth
