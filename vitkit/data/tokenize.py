"""Text tokenizers for the text towers of CLIP / OpenCLIP, SigLIP and SigLIP 2, built from the files a
checkpoint folder ships and run by the `tokenizers` library (batches encoded in Rust). The ids are the ones
transformers gives for the way each model is used; every row has `context_length` int64 ids.

clip     = `CLIPTokenizer(vocab, merges)(texts, padding="max_length", truncation=True, max_length=77)`:
           NFC, whitespace runs to one space, lowercase; CLIP's split regex, byte-level BPE with "</w>" ending
           each word; <|startoftext|> ... <|endoftext|>, the latter kept last when truncated; padded with the
           folder's pad token (OpenAI's <|endoftext|>, LAION's "!", which transformers, unlike OpenCLIP, then
           also matches as a special token inside the text). Files: tokenizer.json, or vocab.json + merges.txt.
siglip   = `SiglipTokenizer(spiece.model)(texts, padding="max_length", truncation=True, max_length=64)`:
           special tokens (</s>, <unk>) split off the raw text first; the text between them lowercased, stripped
           of ASCII punctuation, whitespace squeezed and trimmed (big_vision's canonicalisation, in Python as
           transformers does it), then encoded by the SentencePiece unigram model (spm_model.py) behind "<unk>",
           whose own pieces are dropped again (transformers' trick against the dummy prefix); </s> appended
           unless the ids already end with it; padded with </s>. File: spiece.model (a tokenizer.json beside it
           is not what SiglipTokenizer reads).
siglip2  = `Siglip2Tokenizer.from_pretrained(folder)` as `Siglip2Processor` calls it (padding="max_length",
           truncation=True, max_length=64): Gemma's byte-fallback BPE over the lowercased text with spaces as
           "▁"; bos/eos as the tokenizer.json post-processor adds them (transformers ignores add_bos_token /
           add_eos_token beside a tokenizer.json); padded on the left unless tokenizer_config.json says
           otherwise (Siglip2Tokenizer's default). File: tokenizer.json.

As transformers 5 does, tokenizer.json gives only the vocabulary, merges, added tokens (and siglip2's
post-processor): the pipeline around them is the class's. Every kind first looks for vitkit_tokenizer.json
(`TextTokenizer.save`), and reads tokenizer_config.json / special_tokens_map.json for the special tokens, the
padding and truncation sides and model_max_length (the context length when it is at most 1024).

Try it:  python -c "from vitkit.data.tokenize import load_tokenizer; print(load_tokenizer('ckpt', 'clip')(['a cat'])[0, :4])"
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import string
from collections.abc import Sequence
from pathlib import Path

import torch

from vitkit.data.spm_model import (
    NORMAL,
    USER_DEFINED,
    Charsmap,
    read_spm_model,
    require_tokenizers,
    spm_tokenizer,
)
from vitkit.limits import check_int

KINDS = ("clip", "siglip", "siglip2")
SAVED = "vitkit_tokenizer.json"
FORMAT = "vitkit-tokenizer/1"
SOURCES = {"clip": ("tokenizer.json", "vocab.json + merges.txt"), "siglip": ("spiece.model",),
           "siglip2": ("tokenizer.json",)}
CONTEXT_LENGTH = {"clip": 77, "siglip": 64, "siglip2": 64}
MAX_CONTEXT_LENGTH = 1024
MAX_JSON_BYTES = 256 * 2**20  # Gemma's tokenizer.json is ~35 MB
# transformers' class defaults: special tokens, and the side Siglip2Tokenizer pads on (a class attribute)
SPECIAL_TOKENS = {
    "clip": {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
             "pad_token": "<|endoftext|>"},
    "siglip": {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"},
    "siglip2": {"unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                "mask_token": "<mask>"},
}
PADDING_SIDE = {"clip": "right", "siglip": "right", "siglip2": "left"}
# CLIPTokenizer's split: its two special tokens, English contractions, letter runs, single digits, other runs
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
TOKEN_FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WHITESPACE = re.compile(r"\s+")


class TextTokenizer:
    """Texts -> (N, context_length) int64 ids, for one text tower; `load_tokenizer` makes one."""

    def __init__(self, kind: str, tokenizer_json: str, rules: dict, context_length: int):
        tokenizers = require_tokenizers()
        self.kind, self.context_length = kind, context_length
        self.pad_id, self.eos_id = rules["pad_id"], rules["eos_id"]
        self.padding_side = rules["padding_side"]
        self._rules = rules
        self._tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
        self._json = self._tokenizer.to_str()  # before padding and truncation are switched on
        everything = json.dumps({"kind": kind, "context_length": context_length, "rules": rules},
                                sort_keys=True, ensure_ascii=False)
        self.fingerprint = hashlib.sha256(f"{everything}\n{self._json}".encode()).hexdigest()[:16]
        if kind == "siglip":
            self._charsmap = Charsmap(base64.b64decode(rules["charsmap"]), rules["user_defined"]) \
                if rules["charsmap"] else None
            self._specials = {content: (token_id, lstrip, rstrip)
                              for content, token_id, lstrip, rstrip in rules["specials"]}
            longest_first = sorted(self._specials, key=len, reverse=True)
            self._special_split = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")
            self._unk_length = len(self._encode([rules["unk_token"]])[0])
        else:
            self._tokenizer.enable_truncation(context_length, direction=rules["truncation_side"])
            self._tokenizer.enable_padding(direction=rules["padding_side"], pad_id=self.pad_id,
                                           pad_token=rules["pad_token"], length=context_length)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings (a list, not one string)")
        texts = list(texts)
        if not all(isinstance(text, str) for text in texts):
            raise TypeError("texts must be a sequence of strings")
        if self.kind == "siglip":
            rows = self._siglip(texts)
        else:
            rows = [encoding.ids for encoding in self._tokenizer.encode_batch(texts)]
        return torch.tensor(rows, dtype=torch.int64).reshape(len(texts), self.context_length)

    def save(self, folder: Path) -> None:
        """Writes `folder/vitkit_tokenizer.json`, all that decides the ids (read back by `load_tokenizer`)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "kind": self.kind, "context_length": self.context_length,
                "rules": self._rules, "tokenizer": json.loads(self._json)}
        temporary = folder / f".{SAVED}.tmp"  # replaced in one step: a reader never sees half a file
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(data, file, ensure_ascii=False)
        os.replace(temporary, folder / SAVED)

    # -- siglip: transformers' SiglipTokenizer, step by step ---------------------------------------------------
    def _encode(self, texts: list[str]) -> list[list[int]]:
        if self._charsmap is not None:
            texts = [self._charsmap.normalize(text) for text in texts]
        return [encoding.ids for encoding in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def _split(self, text: str) -> list[str | int]:
        """`text` split at special tokens (as ids), which strip the whitespace beside them (lstrip/rstrip)."""
        parts = self._special_split.split(text)  # odd positions: the special tokens
        for i in range(1, len(parts), 2):
            _, lstrip, rstrip = self._specials[parts[i]]
            if rstrip:
                parts[i + 1] = parts[i + 1].lstrip()
            if lstrip:
                parts[i - 1] = parts[i - 1].rstrip()
        return [self._specials[part][0] if i % 2 else part for i, part in enumerate(parts) if part]

    def _canonical(self, text: str) -> str:
        """big_vision's canonicalize_text, as SiglipTokenizer does it."""
        if self._rules["lowercase"]:
            text = text.lower()
        return _WHITESPACE.sub(" ", text.translate(_PUNCTUATION)).strip()

    def _siglip(self, texts: list[str]) -> list[list[int]]:
        # SiglipTokenizer.tokenize prefixes "▁" (the text's own "▁" become spaces) before the special split
        split = [self._split("▁" + text.replace("▁", " ")) for text in texts]
        unk = self._rules["unk_token"]
        encoded = iter(self._encode([unk + self._canonical(part) for parts in split for part in parts
                                     if isinstance(part, str)]))
        rows = []
        for parts in split:
            ids, special = [], []
            for part in parts:
                if isinstance(part, int):
                    ids.append(part)
                    special.append(True)
                else:  # the text behind "<unk>", so that SentencePiece's dummy prefix goes to "<unk>"
                    piece_ids = next(encoded)
                    piece_ids = piece_ids[self._unk_length:] if len(piece_ids) >= self._unk_length else piece_ids
                    ids += piece_ids
                    special += [False] * len(piece_ids)
            if len(ids) > 1 and ids[0] == self._rules["space_id"] and not special[0] and special[1]:
                ids = ids[1:]  # SiglipTokenizer.tokenize drops a lone "▁" before a special token
            rows.append(self._finish(ids))
        return rows

    def _finish(self, ids: list[int]) -> list[int]:
        """Truncation with room for </s>, </s> unless already last (build_inputs_with_special_tokens), padding."""
        keep = self.context_length - 1
        if len(ids) > keep:
            ids = ids[:keep] if self._rules["truncation_side"] == "right" else ids[len(ids) - keep:]
        if not ids or ids[-1] != self.eos_id:
            ids = ids + [self.eos_id]
        padding = [self.pad_id] * (self.context_length - len(ids))
        return ids + padding if self._rules["padding_side"] == "right" else padding + ids


def load_tokenizer(folder: Path, kind: str, context_length: int | None = None) -> TextTokenizer:
    """The `kind` tokenizer ("clip", "siglip" or "siglip2") of a checkpoint folder; see the module docstring."""
    folder = Path(folder)
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(KINDS)}")
    if context_length is not None:
        check_int("context_length", context_length, 2, MAX_CONTEXT_LENGTH)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (looking for a {kind} tokenizer)")
    require_tokenizers()
    if (folder / SAVED).is_file():
        return _load_saved(folder / SAVED, kind, context_length)
    config = _config(folder)
    if kind == "siglip" and (folder / "spiece.model").is_file():
        tokenizer_json, rules = _siglip(folder, config)
    elif kind != "siglip" and (folder / "tokenizer.json").is_file():
        tokenizer_json, rules = _bpe(folder, config, kind, folder / "tokenizer.json")
    elif kind == "clip" and (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        tokenizer_json, rules = _bpe(folder, config, kind, None)
    else:
        looked_for = ", ".join((SAVED, *SOURCES[kind]))
        raise FileNotFoundError(f"{folder}: no {kind} tokenizer files (looked for {looked_for})")
    if context_length is None:
        length = config.get("model_max_length")
        sane = isinstance(length, int) and not isinstance(length, bool) and 2 <= length <= MAX_CONTEXT_LENGTH
        context_length = length if sane else CONTEXT_LENGTH[kind]
    return TextTokenizer(kind, tokenizer_json, rules, context_length)


# -- reading a folder ------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"larger than {MAX_JSON_BYTES >> 20} MiB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: not a valid JSON file ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _config(folder: Path) -> dict:
    """tokenizer_config.json, and special_tokens_map.json where transformers reads it (configs without
    added_tokens_decoder), which then wins."""
    config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    if "added_tokens_decoder" not in config and (folder / "special_tokens_map.json").is_file():
        config.update(_read_json(folder / "special_tokens_map.json"))
    for side in ("padding_side", "truncation_side"):
        if config.get(side) not in (None, "left", "right"):
            raise ValueError(f"{folder / 'tokenizer_config.json'}: {side} must be 'left' or 'right'")
    return config


def _token(value, where: str) -> tuple[str, dict]:
    """A special token as configs write it: a string, or an AddedToken dict -> (content, its flags)."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict) and isinstance(value.get("content"), str) and all(
            isinstance(value.get(flag, False), bool) for flag in TOKEN_FLAGS):
        return value["content"], {flag: value[flag] for flag in TOKEN_FLAGS if flag in value}
    raise ValueError(f"{where}: not a token: {str(value)[:80]!r}")


def _named_tokens(config: dict, kind: str, where: str) -> dict[str, tuple[str, dict]]:
    """bos/eos/unk/pad/... -> (content, flags): the config's, else the transformers class's default."""
    return {key: _token(config.get(key) or default, where) for key, default in SPECIAL_TOKENS[kind].items()}


def _extra_tokens(config: dict, where: str) -> list[tuple[str, dict]]:
    extra = []
    for key in ("additional_special_tokens", "extra_special_tokens"):
        values = config.get(key) or []
        if not isinstance(values, list):
            raise ValueError(f"{where}: {key} must be a list")
        extra += [_token(value, where) for value in values]
    return extra


def _decoder(config: dict, where: str) -> list[tuple[int, str, dict]]:
    """tokenizer_config.json's added_tokens_decoder as (id, content, flags), by id."""
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict) or not all(str(key).isdigit() for key in decoder):
        raise ValueError(f"{where}: added_tokens_decoder must map ids to tokens")
    return sorted((int(key), *_token(value, where)) for key, value in decoder.items())


def _bpe(folder: Path, config: dict, kind: str, path: Path | None) -> tuple[str, dict]:
    """clip / siglip2: transformers' CLIPTokenizer / Siglip2Tokenizer pipeline around the folder's BPE."""
    tokenizers = require_tokenizers()
    from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    where = str(folder / "tokenizer_config.json")
    named = _named_tokens(config, kind, where)
    if path is None:  # vocab.json + merges.txt, read by tokenizers as CLIPTokenizer(vocab, merges) has them read
        try:
            vocab, merges = BPE.read_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
        except Exception as e:
            raise ValueError(f"{folder}/vocab.json + merges.txt: not a BPE vocabulary ({str(e).splitlines()[0]})") \
                from None
        file_tokens, file_json = [], {}
    else:
        file_json = _read_json(path)
        vocab, merges, file_tokens = _bpe_parts(file_json, path)
    unk = named["unk_token"][0]
    try:
        if kind == "clip":
            model = BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                        end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk)
        else:
            model = BPE(vocab=vocab, merges=merges, fuse_unk=True, unk_token=unk, dropout=None, byte_fallback=True)
    except Exception as e:
        raise ValueError(f"{path or folder}: not a BPE vocabulary ({str(e).splitlines()[0]})") from None
    tokenizer = tokenizers.Tokenizer(model)
    if kind == "clip":
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
             pre_tokenizers.ByteLevel(add_prefix_space=False)])
    else:
        tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
        tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")

    # Added tokens as transformers adds them: tokenizer_config.json's added_tokens_decoder, else
    # tokenizer.json's added_tokens (both by id), then any named or extra special token still missing
    decoder = _decoder(config, where)
    tokens = [(content, flags) for _, content, flags in decoder] if decoder else file_tokens
    have = {content for content, _ in tokens}
    for content, flags in [*named.values(), *_extra_tokens(config, where)]:
        if content not in have:
            tokens.append((content, {**flags, "special": True}))
            have.add(content)
    tokenizer.add_tokens([AddedToken(content, **flags) for content, flags in tokens])

    ids = {key: tokenizer.token_to_id(content) for key, (content, _) in named.items()}
    if kind == "clip":  # CLIPTokenizer always adds <|startoftext|> ... <|endoftext|>
        tokenizer.post_processor = processors.RobertaProcessing(
            (named["eos_token"][0], ids["eos_token"]), (named["bos_token"][0], ids["bos_token"]),
            trim_offsets=False, add_prefix_space=False)
    elif file_json.get("post_processor"):  # siglip2: add_bos_token / add_eos_token are ignored beside it
        tokenizer.post_processor = _post_processor(file_json, path)

    rules = {"pad_id": ids["pad_token"], "pad_token": named["pad_token"][0], "eos_id": ids["eos_token"],
             "padding_side": _side(config, "padding_side", file_json.get("padding"), PADDING_SIDE[kind]),
             "truncation_side": _side(config, "truncation_side", file_json.get("truncation"), "right")}
    return tokenizer.to_str(), rules


def _side(config: dict, key: str, file_section, default: str) -> str:
    """padding/truncation side: tokenizer_config.json's, else tokenizer.json's, else the class default."""
    if config.get(key):
        return config[key]
    direction = file_section.get("direction") if isinstance(file_section, dict) else None
    return direction.lower() if direction in ("Left", "Right") else default


def _bpe_parts(data: dict, path: Path) -> tuple[dict, list, list[tuple[str, dict]]]:
    """tokenizer.json's vocabulary, merges and added tokens (by id), checked."""
    model = data.get("model")
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE":
        raise ValueError(f"{path}: not a BPE tokenizer (model type {model and model.get('type')!r})")
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, list):
        raise ValueError(f"{path}: the BPE model has no vocab object or merges list")
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in merges]
    added = data.get("added_tokens") or []
    if not isinstance(added, list) or not all(isinstance(t, dict) and isinstance(t.get("id"), int) for t in added):
        raise ValueError(f"{path}: added_tokens must be a list of tokens with ids")
    return vocab, merges, [_token(token, str(path)) for token in sorted(added, key=lambda t: t["id"])]


def _post_processor(data: dict, path: Path):
    """tokenizer.json's post-processor, read by tokenizers from the file without its vocabulary."""
    tokenizers = require_tokenizers()
    bare = {**data, "model": {**data["model"], "vocab": {}, "merges": []}, "added_tokens": [],
            "normalizer": None, "pre_tokenizer": None, "decoder": None, "padding": None, "truncation": None}
    try:
        return tokenizers.Tokenizer.from_str(json.dumps(bare)).post_processor
    except Exception as e:
        raise ValueError(f"{path}: unreadable post_processor ({str(e).splitlines()[0]})") from None


def _siglip(folder: Path, config: dict) -> tuple[str, dict]:
    """siglip: the SentencePiece model as tokenizers Unigram + the rules of transformers' SiglipTokenizer."""
    path, where = folder / "spiece.model", str(folder / "tokenizer_config.json")
    model = read_spm_model(path)
    legacy = config.get("legacy", True)  # legacy=False turns SentencePiece's dummy prefix off
    tokenizer = spm_tokenizer(model, add_dummy_prefix=None if legacy else False)
    piece_ids = {piece: i for i, (piece, _, _) in enumerate(model.pieces)}
    # SiglipTokenizer wraps eos/unk/pad in AddedToken(lstrip=True, rstrip=True); the config's flags win
    specials = {content: (token_id, flags) for token_id, content, flags in _decoder(config, where)}
    named = _named_tokens(config, "siglip", where)
    for content, flags in [*((c, {"lstrip": True, "rstrip": True, **f}) for c, f in named.values()),
                           *_extra_tokens(config, where)]:
        if content not in specials:
            if content not in piece_ids:
                raise ValueError(f"{path}: special token {content!r} is not a piece of the model")
            specials[content] = (piece_ids[content], flags)
    space_id = next((i for i, (piece, _, kind) in enumerate(model.pieces)
                     if piece == "▁" and kind in (NORMAL, USER_DEFINED)), -1)
    rules = {"pad_id": specials[named["pad_token"][0]][0], "eos_id": specials[named["eos_token"][0]][0],
             "unk_token": named["unk_token"][0], "lowercase": bool(config.get("do_lower_case", True)),
             "specials": [[content, token_id, flags.get("lstrip", False), flags.get("rstrip", False)]
                          for content, (token_id, flags) in specials.items()],
             "charsmap": base64.b64encode(model.precompiled_charsmap).decode("ascii"),
             "user_defined": model.user_defined, "space_id": space_id,
             "padding_side": config.get("padding_side") or "right",
             "truncation_side": config.get("truncation_side") or "right"}
    return tokenizer.to_str(), rules


# -- vitkit_tokenizer.json -------------------------------------------------------------------------------------
RULE_TYPES = {"pad_id": int, "eos_id": int, "padding_side": str, "truncation_side": str}
KIND_RULE_TYPES = {"clip": {"pad_token": str}, "siglip2": {"pad_token": str},
                   "siglip": {"unk_token": str, "lowercase": bool, "specials": list, "charsmap": str,
                              "user_defined": list, "space_id": int}}


def _load_saved(path: Path, kind: str, context_length: int | None) -> TextTokenizer:
    data = _read_json(path)
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file (format {data.get('format')!r})")
    if data.get("kind") != kind:
        raise ValueError(f"{path}: holds a {data.get('kind')!r} tokenizer, not {kind!r}")
    rules = data.get("rules")
    types = {**RULE_TYPES, **KIND_RULE_TYPES[kind]}
    if not isinstance(rules, dict) or not isinstance(data.get("tokenizer"), dict) or any(
            type(rules.get(key)) is not expected for key, expected in types.items()):
        raise ValueError(f"{path}: rules or tokenizer missing or malformed (needs {', '.join(types)})")
    if rules["padding_side"] not in ("left", "right") or rules["truncation_side"] not in ("left", "right"):
        raise ValueError(f"{path}: padding_side and truncation_side must be 'left' or 'right'")
    if context_length is None:
        context_length = check_int("context_length", data.get("context_length"), 2, MAX_CONTEXT_LENGTH, str(path))
    try:
        return TextTokenizer(kind, json.dumps(data["tokenizer"]), rules, context_length)
    except Exception as e:  # tokenizers' own parse errors are plain Exceptions
        raise ValueError(f"{path}: unreadable tokenizer ({str(e).splitlines()[0]})") from None
