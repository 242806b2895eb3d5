"""Image-text models (CLIP, OpenCLIP, SigLIP, SigLIP 2): text embeddings in the image embeddings' space, and
zero-shot classification over labels given as words.

    import vitkit
    model = vitkit.load("openai/clip-vit-base-patch32")            # the image tower
    text = vitkit.load_text("openai/clip-vit-base-patch32")        # its text tower and tokenizer
    text.embed(["a dog on a beach"])                               # (1, 512), L2-normalised
    zero_shot = vitkit.ZeroShotClassifier(model, text, ["cat", "dog", "a red car"])
    zero_shot.classify(["photo.jpg"], top_k=3)                     # the same Predictions as Model.classify

A label's embedding is the normalised mean of its prompts' embeddings (CLIP's prompt ensembling: the 80 ImageNet
templates of the CLIP paper by default), computed once per label set and kept on disk
($VITKIT_CACHE_DIR/text). A ZeroShotClassifier has the Model interface the batch jobs use (spec, device,
source_id, __call__, top_k), so `vitkit classify --labels` runs through the same rows, job and resume; its
job_settings name the label set and templates, so a resumed job never mixes two label sets.

Try it:  python -m pytest tests/test_zero_shot.py -q
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from collections.abc import Sequence
from importlib import resources

import torch
from tqdm import tqdm

from vitkit.api import Model, Prediction, resolve_device
from vitkit.cache import cache_dir
from vitkit.checkpoints.io import CheckpointError, read_tensors, write_tensors
from vitkit.checkpoints.text_convert import load_text_tower
from vitkit.data.tokenize import TextTokenizer, load_tokenizer
from vitkit.limits import MAX_TEXT_CHARS, MAX_TEXTS
from vitkit.models.text import TextTransformer

TEXT_BATCH = 64
PROGRESS_FROM = 2048  # prompts: label sets that take seconds or more show a progress bar (on stderr)
PROMPTS_AT_ONCE = 4096  # label prompts embedded per pass (ImageNet's 80,000 in 20 passes)


def default_templates() -> tuple[str, ...]:
    """The 80 ImageNet prompt templates of the CLIP paper ("a photo of a {}.", "a sketch of the {}.", ...)."""
    text = resources.files("vitkit.assets").joinpath("clip-imagenet-templates.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


def check_texts(texts: Sequence[str], what: str = "texts") -> list[str]:
    """`texts` as a list of strings within the limits, else a one-line ValueError."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError(f"no {what} given")
    if len(texts) > MAX_TEXTS:
        raise ValueError(f"{len(texts)} {what}, more than {MAX_TEXTS} at once")
    for n, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{what}[{n}] is {type(text).__name__}, not a string")
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"{what}[{n}] has {len(text)} characters, more than {MAX_TEXT_CHARS}")
    return texts


def labels_from(listed: str | None, file: str | None) -> tuple[str, ...] | None:
    """Class names from `--labels "cat,dog,a red car"` (comma-separated) or `--labels-file` (one per line; blank
    lines and surrounding spaces dropped); None when neither is given."""
    if listed is not None and file is not None:
        raise ValueError("give --labels or --labels-file, not both")
    if listed is None and file is None:
        return None
    if listed is not None:
        text = listed
    else:
        try:
            text = open(file, encoding="utf-8").read(MAX_TEXT_CHARS * 1000 + 1)
        except UnicodeDecodeError as err:
            raise ValueError(f"{file}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        if len(text) > MAX_TEXT_CHARS * 1000:
            raise ValueError(f"{file}: more than {MAX_TEXT_CHARS * 1000} characters of class names")
    names = [name.strip() for name in (text.split(",") if listed is not None else text.splitlines())]
    names = [name for name in names if name]
    if len(set(names)) != len(names):
        raise ValueError(f"the class names repeat: {sorted({n for n in names if names.count(n) > 1})[:5]}")
    return tuple(check_texts(names, "labels"))


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    templates = tuple(check_texts(templates, "templates"))
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"template {template!r} must hold exactly one {{}} where the label goes")
    return templates


class TextEncoder:
    """A text tower with its tokenizer, on one device, in inference mode. `net`: a TextTransformer, or the
    onnxruntime tower of an exported file (vitkit.onnx.text.OnnxTextTower)."""

    def __init__(self, net, tokenizer: TextTokenizer, source: str, device: str | torch.device | None = "cpu"):
        self.device = resolve_device(device)
        self.net = net.to(self.device).eval()
        self.tokenizer = tokenizer
        self.source = source
        self._fingerprint: str | None = None
        self._labels: dict[tuple, torch.Tensor] = {}

    @property
    def fingerprint(self) -> str:
        """What text vectors depend on: every weight of the tower and the tokenizer. An index stores it and
        refuses queries from another tower."""
        if self._fingerprint is None:
            joined = f"{self.tokenizer.fingerprint}:{self.net.weights_digest()}"
            self._fingerprint = hashlib.blake2b(joined.encode(), digest_size=12).hexdigest()
        return self._fingerprint

    @property
    def dim(self) -> int:
        return self.net.config.embed_dim

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Texts -> embeddings (N, P) as float32 on the CPU, L2-normalised unless normalize=False."""
        return self.embed_ids(self.tokenizer(check_texts(texts)), normalize)

    @torch.inference_mode()
    def embed_ids(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Token ids (N, context_length) from `self.tokenizer` -> embeddings (N, P), in batches of TEXT_BATCH."""
        out = [self.net(self._shortest(ids[start:start + TEXT_BATCH]).to(self.device)).float().cpu()  # (n, P)
               for start in range(0, len(ids), TEXT_BATCH)]
        vectors = torch.cat(out)
        return torch.nn.functional.normalize(vectors, dim=-1) if normalize else vectors

    def _shortest(self, ids: torch.Tensor) -> torch.Tensor:
        """A causal tower pooled at the end-of-text token never looks past it: the columns after the batch's last
        end token are cut (a prompt of 10 tokens then costs 11 positions, not 77). SigLIP reads every position."""
        cfg = self.net.config
        if not isinstance(self.net, TextTransformer) or not cfg.causal or cfg.pool == "last" or \
                self.tokenizer.padding_side != "right":  # (an ONNX tower takes the full length)
            return ids
        ends = ids == cfg.eos_id if cfg.pool == "eos" else ids == ids.max(dim=1, keepdim=True).values
        last = int(ends.int().argmax(dim=1).max()) + 1  # (the first end token of each row; the latest of them) + 1
        return ids[:, :last]

    def label_embeddings(self, labels: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """(L, P) normalised: each label's prompts embedded, averaged, normalised again. Kept in memory and on
        disk, keyed by the tower's fingerprint, the labels and the templates."""
        labels = tuple(check_texts(labels, "labels"))
        templates = check_templates(templates) if templates is not None else default_templates()
        key = (labels, templates)
        if key not in self._labels:
            self._labels[key] = self._cached_label_embeddings(labels, templates)
        return self._labels[key]

    def _cached_label_embeddings(self, labels: tuple[str, ...], templates: tuple[str, ...]) -> torch.Tensor:
        name = hashlib.blake2b(json.dumps([self.fingerprint, labels, templates]).encode(), digest_size=16)
        target = cache_dir("text") / f"{name.hexdigest()}.safetensors"
        if target.is_file():
            try:
                vectors = read_tensors(target)["labels"]
                if vectors.shape == (len(labels), self.dim):
                    return vectors
            except (CheckpointError, KeyError, OSError):
                pass  # a damaged entry is recomputed and replaced
        step = max(1, PROMPTS_AT_ONCE // len(templates))  # labels per pass: memory bounded by the prompts in it
        parts = []
        for start in tqdm(range(0, len(labels), step), desc="label embeddings", unit="part", file=sys.stderr,
                          disable=len(labels) * len(templates) <= PROGRESS_FROM, dynamic_ncols=True, leave=False):
            names = labels[start:start + step]
            prompts = [template.format(label) for label in names for template in templates]
            per_prompt = self.embed(prompts).reshape(len(names), len(templates), -1)  # (l, templates, P)
            parts.append(torch.nn.functional.normalize(per_prompt.mean(dim=1), dim=-1))  # (l, P)
        vectors = torch.cat(parts)  # (L, P)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_tensors({"labels": vectors}, target)
        except OSError:
            pass  # a read-only cache costs the recomputation next time, nothing else
        return vectors


def load_text(model: str, device: str | None = "cpu") -> TextEncoder:
    """The text tower and tokenizer of an image-text checkpoint (registry name, hub id or folder), or of a text
    tower exported to ONNX (`vitkit export onnx-text`)."""
    if str(model).endswith(".onnx"):
        from vitkit.onnx.text import OnnxTextTower

        tower = OnnxTextTower(model, "cpu" if device in (None, "auto") else device)
        return TextEncoder(tower, tower.tokenizer, str(model), tower.session.device)
    loaded = load_text_tower(model)
    tokenizer = load_tokenizer(loaded.folder, loaded.tokenizer_kind, loaded.net.config.context_length)
    return TextEncoder(loaded.net, tokenizer, loaded.source, device)


def text_tower_of(model: Model, pool: str | None = None) -> TextEncoder | None:
    """The text tower that belongs with `model`'s vectors of `pool` (default: its own pooling): an image-text
    model's, when those vectors are its projected image-text embeddings and its checkpoint has a text tower;
    else None (an image-only model, another pooling, an image tower saved alone)."""
    if (pool or model.default_pool) != "prelogits" or model.config.family not in ("clip", "siglip"):
        return None
    try:
        return load_text(str(model.source), model.device)
    except CheckpointError:  # no text tower in the checkpoint
        return None
    except (FileNotFoundError, ModuleNotFoundError) as err:  # a text tower without its tokenizer, or no `tokenizers`
        warnings.warn(f"{model.source}: its text tower cannot be used ({err}); text search is off", stacklevel=2)
        return None


class ZeroShotClassifier:
    """An image model and a text tower scoring images against labels given as words: logits are the pair's
    exp(scale) * cosine (+ SigLIP's bias); scores a softmax over the labels (CLIP) or a sigmoid per label
    (SigLIP, as it was trained)."""

    def __init__(self, model: Model, text: TextEncoder, labels: Sequence[str],
                 templates: Sequence[str] | None = None):
        if model.default_pool != "prelogits":
            raise ValueError(f"{model.source} is not the image tower of an image-text model (no projection or "
                             "attention pooling into a shared space): zero-shot needs CLIP or SigLIP")
        self.model, self.text = model, text
        self.templates = check_templates(templates) if templates is not None else default_templates()
        self.label_vectors = text.label_embeddings(labels, self.templates)  # (L, P)
        if self.label_vectors.shape[1] != model.embedding_shape()[0]:
            raise ValueError(f"the text tower's {self.label_vectors.shape[1]}-d embeddings do not match the image "
                             f"tower's {model.embedding_shape()[0]}-d ones: are they from the same checkpoint?")
        self.labels = tuple(labels)
        self.spec, self.device, self.source = model.spec, model.device, model.source

    @property
    def config(self):
        """The image model's config as a classifier of these labels (what evaluation and reports read)."""
        return self.model.config.replace(num_classes=len(self.labels), labels=self.labels)

    @property
    def source_id(self) -> str:
        return self.model.source_id

    @property
    def provenance(self) -> dict:
        return self.model.provenance

    @property
    def job_settings(self) -> dict:
        """What a job's rows depend on beyond the image model: the text tower, the labels and the templates."""
        digest = hashlib.blake2b(json.dumps([self.text.fingerprint, self.labels, self.templates]).encode(),
                                 digest_size=8).hexdigest()
        return {**self.model.job_settings, "zero_shot_labels": digest}

    def preprocess(self, images) -> torch.Tensor:
        return self.model.preprocess(images)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, L) on the CPU."""
        return self.logits(self.model.embed_pixels(pixels, "prelogits", normalize=True))  # from (B, P)

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, P) -> logits (B, L) on the CPU (the service embeds in its engine, then calls this)."""
        return self.text.net.logits(images.to(self.device), self.label_vectors.to(self.device)).float().cpu()

    def top_k(self, logits: torch.Tensor, k: int = 5) -> list[list[Prediction]]:
        probs = self.text.net.probabilities(logits)
        scores, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)  # (B, k)
        return [[Prediction(int(i), self.labels[int(i)], float(s)) for s, i in zip(row_s, row_i)]
                for row_s, row_i in zip(scores, indices)]

    def classify(self, images, top_k: int = 5) -> list[list[Prediction]]:
        return self.top_k(self(self.preprocess(images if isinstance(images, list) else [images])), top_k)
