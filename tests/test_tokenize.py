"""vitkit.data.tokenize against the tokenizers the text towers are used with: transformers' CLIPTokenizer,
SiglipTokenizer and Siglip2Tokenizer (and OpenCLIP's SimpleTokenizer where it agrees), id for id, over a few
hundred varied strings. Nothing is downloaded: CLIP's real BPE ships inside open_clip; the SentencePiece models
(SigLIP's unigram, Gemma-style BPE for SigLIP 2) are trained here on generated text.

Run:  .venv/bin/python -m pytest tests/test_tokenize.py -q
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import random
import shutil
import sys
import time
import types
import unicodedata
import warnings
from pathlib import Path

import pytest
import torch

from image_text_support import clip_vocabulary  # noqa: E402  (tests/ is on sys.path)
from reference_openclip import bare_openclip  # noqa: E402

from vitkit.data.spm_model import Charsmap, read_spm_model, spm_tokenizer
from vitkit.data.tokenize import load_tokenizer

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")
pytest.importorskip("tokenizers")
transformers.logging.set_verbosity_error()



def open_clip_dir() -> Path:
    """open_clip's package folder (without running its __init__: see tests/reference_openclip.py)."""
    try:
        return Path(bare_openclip().__path__[0])
    except ImportError:
        return Path("open_clip-not-installed")


BPE_GZ = open_clip_dir() / "bpe_simple_vocab_16e6.txt.gz"

# -- the strings ------------------------------------------------------------------------------------------------
WORDS = ("the a of and to in is on with dog cat photo picture image small large red blue green old new man woman "
         "child tree house car street river mountain beach city night day running sitting playing holding looking "
         "bright dark beautiful close-up view painting sketch drawing sculpture rendering cropped blurry good bad "
         "jpeg pixelated origami plushie toy video game tattoo").split()
CLASSES = ["tench", "goldfish", "great white shark", "Rottweiler", "jack-o'-lantern", "Granny Smith", "crêpe",
           "German shepherd dog", "T-shirt", "lesser panda", "ice cream", "espresso", "yellow lady's slipper",
           "Shih-Tzu", "CD player", "hot dog", "potter's wheel", "école", "Gänseblümchen"]
TEMPLATES = ["a photo of a {}.", "a bad photo of the {}.", "itap of a {}.", "a origami {}.", "a {} in a video game.",
             "A PHOTO OF A {}!", "art of the {}", "{}"]
FIXED = [
    "", " ", "   ", "\t", "\n", "\t\n \r\n", "a", "A", ".", "!!!", "?!?!", "...", "'s", "it's", "I'M", "don't can't",
    "Hello, World!", "hello world", "HELLO WORLD", "hElLo WoRlD", "  leading spaces", "trailing spaces   ",
    "multiple     inner \t\t spaces", "tab\tseparated\tvalues", "line\nbreaks\nhere", "windows\r\nline",
    "no\u00a0break\u00a0space", "\u3000ideographic space\u3000", "zero\u200bwidth\u200bspace", "soft\u00adhyphen",
    "café", "cafe\u0301", "naïve résumé", "Ångström", "São Paulo", "Œuvre complète", "Ça va? Très bien, merci!",
    "Grüße aus München, Straße 5", "STRASSE ß ẞ", "Ñandú", "İstanbul", "ǅemal", "ﬁne ﬂour", "“quoted” ‘single’",
    "ＡＢＣ　１２３", "Ⅻ ① ² ½", "𝐀𝐁𝐂 𝕏", "一只猫的照片", "猫の写真です。", "고양이 사진", "صورة قطة جميلة",
    "תמונה של חתול", "बिल्ली की तस्वीर", "ภาพแมว น้ำ", "фотография кошки", "Φωτογραφία γάτας", "ΣΊΣΥΦΟΣ",
    "🐱", "I ❤️ NY", "👍🏽 thumbs", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "🇯🇵🇫🇷", "🧑🏿‍🚀 astronaut", "emoji🎉inside",
    "1234567890", "3.14159", "1,000,000", "2024-01-01T12:00:00Z", "+1 (555) 123-4567", "v1.2.3-rc4", "#42 @home $9.99",
    "https://example.com/path/to/page?q=cat&x=1#frag", "www.test.org", "user@example.com", "C++ & C# || a&&b",
    "&amp; &lt;tag&gt;", "(a) [b] {c} <d>", "~`!@#$%^&*()_+-=[]{}|;:'\",.<>/?\\", "--- *** ___", "a.b.c,d;e:f",
    "<|endoftext|>", "<|startoftext|>", "<|startoftext|>hi<|endoftext|>", "hello<|endoftext|>world",
    "x <|endoftext|> y", "<|ENDOFTEXT|> shout", "<|endoftext", "</s>", "a </s> b", "</s></s>", "hello </s>",
    "</s> start", " </s>x", "<unk>", "<unk> a", "<pad>", "<s>", "<bos>", "<eos>", "<mask>", "<start_of_turn>user",
    "<0x41>", "▁", "▁▁hello", "hello▁world", "a ▁ b", "photo", "photograph", "Photo!", "\x00null\x7fdel", "\u0085nel",
    "\x1fctrl", "\ufeffbom", "\U0001f600\U0001f601", "½ cup",
    # where tokenizers' normalizers.Precompiled and SentencePiece's normalizer part ways
    "a\u0300\u0301", "combining a\u0300\u0301\u0302", "e\u0301\u0302", "ｶﾞｷﾞ", "\u1100\u1161\u11a8", "ㅠㅠ ㄱㅏ",
    "ﬁ\u0301", "²\u0301", "z\u0336a\u0336l\u0336g\u0336o\u0336",
]


def make_texts(n_random: int = 250, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = list(FIXED) + [template.format(name) for template in TEMPLATES for name in CLASSES[:8]]
    sentence = " ".join(rng.choice(WORDS) for _ in range(300))
    texts += [sentence, sentence.upper() + "!" * 50, "word " * 120, "a" * 1200, "猫" * 200, "🐱" * 100,
              ", ".join(CLASSES * 5)]
    pools, separators = [WORDS, CLASSES, [text for text in FIXED if text.strip()]], [" ", "  ", ", ", "\t", "\n", "",
                                                                                     " - ", "! ", "... "]
    for _ in range(n_random):
        parts = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 12))]
        text = "".join(part + rng.choice(separators) for part in parts)
        if rng.random() < 0.3:
            text = text.upper() if rng.random() < 0.5 else text.title()
        texts.append(text)
    return texts


TEXTS = make_texts()


def training_lines(n: int = 4000, seed: int = 1) -> list[str]:
    """Text to train the SentencePiece models on: emoji, Arabic, Hindi, ... stay out (unknown to the models)."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiouäéy"]
    pseudo = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    pools = [WORDS, CLASSES, FIXED[16:50], pseudo]
    return [" ".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(3, 15))) for _ in range(n)]


def assert_same_ids(ours: torch.Tensor, reference, texts: list[str], name: str = "transformers") -> None:
    assert ours.dtype == torch.int64 and ours.shape[0] == len(texts)
    for text, got, expected in zip(texts, ours.tolist(), reference):
        assert got == list(expected), f"first difference, at {text!r}:\n vitkit {got}\n {name} {list(expected)}"


def one_line_error(error: pytest.ExceptionInfo, *names: str) -> None:
    message = str(error.value)
    assert "\n" not in message and all(name in message for name in names), message


def reference_ids(tokenizer, texts: list[str], length: int) -> list[list[int]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SiglipTokenizer warns about texts that already end with </s>
        return tokenizer(texts, padding="max_length", truncation=True, max_length=length)["input_ids"]


# -- the folders ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_folders(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """name -> (folder, the transformers tokenizer it is compared with)."""
    if not BPE_GZ.is_file():
        pytest.skip("open_clip_torch (the source of CLIP's BPE vocabulary) is not installed")
    root = tmp_path_factory.mktemp("clip")
    plain = clip_vocabulary(root / "vocab_merges", config=False)
    folders = {"vocab_merges": (plain, transformers.CLIPTokenizer(str(plain / "vocab.json"), str(plain / "merges.txt")))}
    # OpenAI's hub layout: tokenizer.json + a config whose <|startoftext|> is a normalized added token
    openai = root / "openai"
    folders["vocab_merges"][1].save_pretrained(openai)
    token = {"lstrip": False, "rstrip": False, "single_word": False, "special": True}
    (openai / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": {"49406": {"content": "<|startoftext|>", "normalized": True, **token},
                                 "49407": {"content": "<|endoftext|>", "normalized": False, **token}},
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}))
    # LAION's: pad "!", special tokens as dicts in special_tokens_map.json
    laion = root / "laion"
    laion.mkdir()
    shutil.copy(openai / "tokenizer.json", laion)
    (laion / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, "pad_token": "<|endoftext|>"}))
    token.pop("special")
    (laion / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": {"content": "<|startoftext|>", "normalized": True, **token},
        "eos_token": {"content": "<|endoftext|>", "normalized": True, **token},
        "pad_token": "!", "unk_token": "<|endoftext|>"}))
    for name in ("openai", "laion"):
        folders[name] = (root / name, transformers.CLIPTokenizer.from_pretrained(root / name))
    return folders


def train_spm(prefix: Path, **options) -> Path:
    spm.SentencePieceTrainer.train(sentence_iterator=iter(training_lines()), model_prefix=str(prefix),
                                   num_threads=2, minloglevel=2, **options)
    return prefix.with_suffix(".model")


@pytest.fixture(scope="module")
def siglip_folders(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """SigLIP's spiece.model layout (T5 ids: <pad> 0, </s> 1, <unk> 2, no bos), trained here."""
    root = tmp_path_factory.mktemp("siglip")
    ids = {"model_type": "unigram", "vocab_size": 1000, "pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1}
    folders = {}
    # SigLIP's own settings: nmt_nfkc, so the precompiled character map is used; one user-defined piece
    nfkc = root / "nmt_nfkc"
    nfkc.mkdir()
    train_spm(root / "nfkc", user_defined_symbols=["photo"], **ids).rename(nfkc / "spiece.model")
    folders["nmt_nfkc"] = (nfkc, transformers.SiglipTokenizer(str(nfkc / "spiece.model")))
    # the other switches: no character map, byte fallback, whitespace kept; legacy=False, left padding,
    # case kept, model_max_length 40, from tokenizer_config.json
    other = root / "identity_bytes"
    other.mkdir()
    train_spm(root / "identity", byte_fallback=True, remove_extra_whitespaces=False,
              normalization_rule_name="identity", **ids).rename(other / "spiece.model")
    (other / "tokenizer_config.json").write_text(json.dumps(
        {"legacy": False, "padding_side": "left", "do_lower_case": False, "model_max_length": 40}))
    folders["identity_bytes"] = (other, transformers.SiglipTokenizer.from_pretrained(other))
    return folders


@pytest.fixture(scope="module")
def siglip2_folders(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """Gemma-style tokenizer.json (byte-fallback BPE, <pad> 0 <eos> 1 <bos> 2 <unk> 3 <mask> 4), as transformers
    writes it from a SentencePiece BPE model trained here."""
    root = tmp_path_factory.mktemp("siglip2")
    source = root / "source"
    source.mkdir()
    train_spm(source / "tokenizer", model_type="bpe", vocab_size=1200, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
              pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", byte_fallback=True, split_digits=True,
              control_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>"], allow_whitespace_only_pieces=True,
              add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity")
    saved = root / "saved"
    transformers.GemmaTokenizer.from_pretrained(source).save_pretrained(saved)
    config = json.loads((saved / "tokenizer_config.json").read_text())
    config.pop("vocab_file")
    (saved / "tokenizer_config.json").write_text(json.dumps(config))
    # Gemma's own post-processor (<bos> $A), right padding and added tokens from tokenizer_config.json, a
    # non-special one among them; add_eos_token, which transformers ignores beside a tokenizer.json
    gemma = root / "gemma_like"
    gemma.mkdir()
    data = json.loads((saved / "tokenizer.json").read_text())
    bos = {"SpecialToken": {"id": "<bos>", "type_id": 0}}
    data["post_processor"] = {"type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
                              "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos,
                                       {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}}}
    (gemma / "tokenizer.json").write_text(json.dumps(data))
    decoder = {str(token.pop("id")): token for token in data["added_tokens"]}
    decoder[str(data["model"]["vocab"]["▁photo"])] = {"content": "▁photo", "lstrip": False, "rstrip": False,
                                                      "normalized": True, "single_word": False, "special": False}
    (gemma / "tokenizer_config.json").write_text(json.dumps(
        {"added_tokens_decoder": decoder, "padding_side": "right", "add_eos_token": True,
         "model_max_length": 1e30, "tokenizer_class": "GemmaTokenizer"}))
    return {name: (root / name, transformers.Siglip2Tokenizer.from_pretrained(root / name))
            for name in ("saved", "gemma_like")}


# -- parity -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["vocab_merges", "openai", "laion"])
def test_clip_matches_transformers(clip_folders, variant):
    folder, reference = clip_folders[variant]
    tokenizer = load_tokenizer(folder, "clip")
    assert (tokenizer.context_length, tokenizer.eos_id) == (77, 49407)
    assert tokenizer.pad_id == (0 if variant == "laion" else 49407)
    assert_same_ids(tokenizer(TEXTS), reference_ids(reference, TEXTS, 77), TEXTS)


def import_openclip_tokenizer() -> types.ModuleType:
    """open_clip.tokenizer without open_clip's __init__ (which needs torchvision); ftfy, when it is not
    installed, as an identity stand-in (the strings compared below are ones ftfy leaves alone)."""
    bare_openclip()
    stub = None
    if importlib.util.find_spec("ftfy") is None:
        stub = sys.modules["ftfy"] = types.ModuleType("ftfy")
        stub.fix_text = lambda text: text
    try:
        return importlib.import_module("open_clip.tokenizer")
    finally:
        if stub is not None:
            del sys.modules["ftfy"]


def openclip_agrees(text: str) -> bool:
    """Texts where OpenCLIP's cleaning cannot part from transformers': ftfy (NFC, quotes, ligatures, widths,
    controls), html.unescape ("&"), str.split's whitespace, its own special-token names ("<|"), and
    Python's context-aware lower() (final sigma)."""
    return (unicodedata.normalize("NFC", text) == text and "&" not in text and "<|" not in text
            and "Σ" not in text and all(c.isprintable() or c in " \t\n" for c in text)
            and not any(0x2018 <= ord(c) <= 0x201F or 0xFB00 <= ord(c) <= 0xFB4F or 0xFF00 <= ord(c) <= 0xFFEF
                        for c in text))


def test_clip_matches_openclip(clip_folders):
    try:
        simple = import_openclip_tokenizer().SimpleTokenizer()
    except ImportError as e:
        pytest.skip(f"open_clip.tokenizer does not import: {e}")
    texts = [text for text in TEXTS if openclip_agrees(text)]
    assert len(texts) > 250
    openai = load_tokenizer(clip_folders["openai"][0], "clip")(texts)
    after_end = torch.arange(77) > (openai == 49407).int().argmax(1, keepdim=True)
    assert_same_ids(torch.where(after_end, 0, openai), simple(texts).tolist(), texts, "open_clip")  # pads with 0
    # LAION's pad "!" is id 0 too; but transformers also matches "!" in the text as that special token
    texts = [text for text in texts if "!" not in text]
    assert_same_ids(load_tokenizer(clip_folders["laion"][0], "clip")(texts), simple(texts).tolist(), texts,
                    "open_clip")


def test_clip_laion_bang_is_the_pad_token(clip_folders):
    """transformers adds a pad token missing from added_tokens as a special token, so with LAION's "!" a "!" in
    the text becomes id 0 where OpenCLIP (which trained these models) has "!</w>" (256); vitkit follows
    transformers."""
    ids = load_tokenizer(clip_folders["laion"][0], "clip")(["hi!"])[0, :4].tolist()
    assert ids == [49406, 1883, 0, 49407]
    assert load_tokenizer(clip_folders["openai"][0], "clip")(["hi!"])[0, :4].tolist() == [49406, 1883, 256, 49407]


@pytest.mark.parametrize("variant", ["nmt_nfkc", "identity_bytes"])
def test_siglip_matches_transformers(siglip_folders, variant):
    folder, reference = siglip_folders[variant]
    tokenizer = load_tokenizer(folder, "siglip")
    assert (tokenizer.pad_id, tokenizer.eos_id) == (1, 1)
    assert tokenizer.context_length == (64 if variant == "nmt_nfkc" else 40)
    assert_same_ids(tokenizer(TEXTS), reference_ids(reference, TEXTS, tokenizer.context_length), TEXTS)


def test_spm_model_matches_sentencepiece(siglip_folders):
    """The SentencePiece part alone, on random text from the blocks where normalization is subtle (combining
    marks, Hangul jamo, half/full width, ligatures, math letters, emoji, controls)."""
    rng = random.Random(5)
    blocks = [(0x9, 0xD), (0x20, 0x7E), (0xA0, 0x36F), (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F),
              (0x1100, 0x11FF), (0x2000, 0x206F), (0x3040, 0x30FF), (0x3130, 0x318F), (0xAC00, 0xAC40),
              (0xFB00, 0xFB4F), (0xFF00, 0xFFEF), (0x1D400, 0x1D4FF), (0x1F300, 0x1F3FF)]
    texts = ["".join(chr(rng.randint(*rng.choice(blocks))) for _ in range(rng.randint(0, 20))) for _ in range(5000)]
    for folder, _ in siglip_folders.values():
        model = read_spm_model(folder / "spiece.model")
        charsmap = Charsmap(model.precompiled_charsmap, model.user_defined) if model.precompiled_charsmap else None
        encoded = spm_tokenizer(model).encode_batch([charsmap.normalize(t) if charsmap else t for t in texts],
                                                    add_special_tokens=False)
        processor = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model"))
        for text, encoding in zip(texts, encoded):
            assert encoding.ids == processor.encode(text), f"{folder.name}: {text!r}"


@pytest.mark.parametrize("variant", ["saved", "gemma_like"])
def test_siglip2_matches_transformers(siglip2_folders, variant):
    folder, reference = siglip2_folders[variant]
    tokenizer = load_tokenizer(folder, "siglip2")
    assert (tokenizer.context_length, tokenizer.pad_id, tokenizer.eos_id) == (64, 0, 1)
    assert_same_ids(tokenizer(TEXTS), reference_ids(reference, TEXTS, 64), TEXTS)


# -- saving, fingerprints, errors, speed ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizers_by_kind(clip_folders, siglip_folders, siglip2_folders):
    return {"clip": load_tokenizer(clip_folders["laion"][0], "clip"),
            "siglip": load_tokenizer(siglip_folders["nmt_nfkc"][0], "siglip"),
            "siglip2": load_tokenizer(siglip2_folders["gemma_like"][0], "siglip2")}


@pytest.mark.parametrize("kind", ["clip", "siglip", "siglip2"])
def test_save_round_trip(tokenizers_by_kind, tmp_path, kind):
    tokenizer = tokenizers_by_kind[kind]
    tokenizer.save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["vitkit_tokenizer.json"]
    loaded = load_tokenizer(tmp_path, kind)
    assert (loaded.kind, loaded.context_length, loaded.pad_id, loaded.eos_id, loaded.fingerprint) == (
        tokenizer.kind, tokenizer.context_length, tokenizer.pad_id, tokenizer.eos_id, tokenizer.fingerprint)
    assert torch.equal(loaded(TEXTS), tokenizer(TEXTS))
    shorter = load_tokenizer(tmp_path, kind, context_length=16)
    assert shorter(TEXTS).shape == (len(TEXTS), 16) and shorter.fingerprint != tokenizer.fingerprint
    with pytest.raises(ValueError) as error:
        load_tokenizer(tmp_path, "siglip2" if kind == "clip" else "clip")
    one_line_error(error, "vitkit_tokenizer.json", kind)


def test_fingerprints(tokenizers_by_kind, clip_folders):
    fingerprints = {kind: tokenizer.fingerprint for kind, tokenizer in tokenizers_by_kind.items()}
    assert len(set(fingerprints.values())) == 3 and all(len(f) == 16 for f in fingerprints.values())
    folder = clip_folders["laion"][0]
    assert load_tokenizer(folder, "clip").fingerprint == fingerprints["clip"]  # stable
    assert load_tokenizer(folder, "clip", context_length=64).fingerprint != fingerprints["clip"]
    assert load_tokenizer(clip_folders["openai"][0], "clip").fingerprint != fingerprints["clip"]  # pad differs


def test_context_length_and_inputs(tokenizers_by_kind, clip_folders):
    folder = clip_folders["vocab_merges"][0]
    ids = load_tokenizer(folder, "clip", context_length=5)(["a photo of a cat", ""])
    assert ids.tolist() == [[49406, 320, 1125, 539, 49407], [49406, 49407, 49407, 49407, 49407]]
    for bad in (1, 5000, 7.0, True):
        with pytest.raises(ValueError):
            load_tokenizer(folder, "clip", context_length=bad)
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        load_tokenizer(folder, "bert")
    tokenizer = tokenizers_by_kind["siglip"]
    assert tokenizer([]).shape == (0, 64)
    for bad in ("a photo", ["a", 3]):
        with pytest.raises(TypeError):
            tokenizer(bad)


def test_missing_files(tmp_path, siglip_folders):
    for kind, names in [("clip", ["tokenizer.json", "vocab.json + merges.txt"]), ("siglip", ["spiece.model"]),
                        ("siglip2", ["tokenizer.json"])]:
        with pytest.raises(FileNotFoundError) as error:
            load_tokenizer(tmp_path, kind)
        one_line_error(error, str(tmp_path), "vitkit_tokenizer.json", *names)
    (tmp_path / "vocab.json").write_text("{}")  # merges.txt missing
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path, "clip")
    with pytest.raises(FileNotFoundError) as error:
        load_tokenizer(tmp_path / "absent", "clip")
    one_line_error(error, "absent")


def test_corrupt_files(tmp_path, clip_folders, siglip_folders, siglip2_folders):
    def expect(folder: Path, kind: str, name: str) -> None:
        with pytest.raises(ValueError) as error:
            load_tokenizer(folder, kind)
        one_line_error(error, str(folder / name) if name else str(folder))

    for kind, source in [("clip", clip_folders["openai"][0]), ("siglip2", siglip2_folders["saved"][0])]:
        folder = tmp_path / kind
        shutil.copytree(source, folder)
        text = (folder / "tokenizer.json").read_text()
        (folder / "tokenizer.json").write_text(text[: len(text) // 2])  # cut short
        expect(folder, kind, "tokenizer.json")
        (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram", "vocab": []}}))
        expect(folder, kind, "tokenizer.json")
        (folder / "tokenizer.json").write_text(text)
        (folder / "tokenizer_config.json").write_text('{"pad_token": 7}')
        expect(folder, kind, "tokenizer_config.json")
    folder = tmp_path / "merges"
    shutil.copytree(clip_folders["vocab_merges"][0], folder)
    (folder / "merges.txt").write_text("#version: 0.2\na b c\n")
    expect(folder, "clip", "")
    folder = tmp_path / "spiece"
    shutil.copytree(siglip_folders["nmt_nfkc"][0], folder)
    model = (folder / "spiece.model").read_bytes()
    for corrupt in (model[: len(model) // 2], bytes(random.Random(0).randrange(256) for _ in range(4096)), b"",
                    b"\x0a\x05\x0a\x03abc"):  # a truncated file, noise, empty, one piece and no unknown piece
        (folder / "spiece.model").write_bytes(corrupt)
        expect(folder, "siglip", "spiece.model")
    (folder / "spiece.model").write_bytes(model)
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<nope>"}))
    expect(folder, "siglip", "spiece.model")
    folder = tmp_path / "saved"
    tokenizer = load_tokenizer(siglip_folders["nmt_nfkc"][0], "siglip")
    tokenizer.save(folder)
    data = json.loads((folder / "vitkit_tokenizer.json").read_text())
    for broken in ({**data, "format": "other"}, {**data, "rules": {**data["rules"], "pad_id": "1"}},
                   {**data, "rules": {**data["rules"], "charsmap": "bm90IGEgY2hhcnNtYXA="}},
                   {**data, "tokenizer": {"model": {"type": "Nope"}}}):
        (folder / "vitkit_tokenizer.json").write_text(json.dumps(broken))
        expect(folder, "siglip", "vitkit_tokenizer.json")
    (folder / "vitkit_tokenizer.json").write_text("[1, 2")
    expect(folder, "siglip", "vitkit_tokenizer.json")


@pytest.mark.slow
def test_ten_thousand_texts(tokenizers_by_kind):
    texts = [f"{text} {i}" for i, text in zip(range(10_000), TEXTS * 30)]
    for kind, tokenizer in tokenizers_by_kind.items():
        start = time.perf_counter()
        ids = tokenizer(texts)
        seconds = time.perf_counter() - start
        assert ids.shape == (10_000, tokenizer.context_length)
        assert seconds < 10, f"{kind}: {seconds:.1f} s for 10,000 texts"
