"""A SentencePiece unigram model file (`spiece.model`, a protobuf `ModelProto`), read without protobuf or
sentencepiece, as a `tokenizers` Unigram tokenizer plus SentencePiece's character map, such that

    spm_tokenizer(model).encode(Charsmap(model.precompiled_charsmap, model.user_defined).normalize(text)).ids
        == SentencePieceProcessor(model_file).encode(text)

for every text with neither a byte piece's name ("<0x41>") nor a NUL character in it: a tokenizers Unigram
matches every piece's name in the text, SentencePiece never matches byte, control, unknown or unused pieces.
The last three are renamed "<id>" + NUL + piece; SigLIP removes "<" and ">" from its texts, so neither those
names nor byte names reach the model there. (An empty charsmap means no character map: Charsmap is skipped.)

- The file is read with a small protobuf wire-format reader. The fields that decide the ids:
  ModelProto.pieces=1 (piece=1, score=2, type=3), trainer_spec=2 (model_type=3, treat_whitespace_as_suffix=24,
  byte_fallback=35, unk_id=40), normalizer_spec=3 (precompiled_charsmap=2, add_dummy_prefix=3,
  remove_extra_whitespaces=4, escape_whitespaces=5).
- The character map (a darts-clone double array from UTF-8 keys to replacement strings) is applied here, not
  by tokenizers' `normalizers.Precompiled`: that one maps a whole grapheme of < 6 bytes by its first match
  ("a" + U+0300 + U+0301 loses the U+0301) and never applies a key of several code points to a longer
  grapheme (half-width "ｶﾞ", decomposed Hangul), where SentencePiece takes the longest key at every position.
  A text without any code point that continues a multi-code-point key is mapped by `str.translate`; only the
  others walk the trie.
- The rest of SentencePiece's normalizer (whitespace, dummy prefix) is rebuilt as tokenizers normalizers, and
  the unigram lattice runs over the whole normalized text, as SentencePiece's does (no Metaspace split).

Try it:  python -c "from vitkit.data.spm_model import read_spm_model; print(len(read_spm_model('spiece.model').pieces))"
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

MAX_SPM_BYTES = 64 * 2**20  # the largest SentencePiece models (256k pieces) are ~5 MB
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # SentencePiece.Type
UNIGRAM = 1  # TrainerSpec.ModelType


@dataclass(frozen=True)
class SpmModel:
    pieces: list[tuple[str, float, int]]  # (piece, score, type), by id
    unk_id: int = 0
    byte_fallback: bool = False
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True

    @property
    def user_defined(self) -> list[str]:
        return [piece for piece, _, kind in self.pieces if kind == USER_DEFINED]


def _fields(data: bytes) -> dict[int, list[int | bytes]]:
    """One protobuf message: field number -> its values (varints and fixed-size as int, length-delimited as
    bytes). ValueError (a short reason) on anything that is not well-formed wire format."""
    fields: dict[int, list[int | bytes]] = {}
    pos, end = 0, len(data)

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            if pos >= end or shift > 63:
                raise ValueError("truncated varint")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while pos < end:
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: int | bytes = varint()
        elif wire == 1:
            value, pos = int.from_bytes(data[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            size = varint()
            value, pos = data[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = int.from_bytes(data[pos:pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("truncated field")
        if number == 0:
            raise ValueError("field number 0")
        fields.setdefault(number, []).append(value)
    return fields


def _last(fields: dict[int, list[int | bytes]], number: int, default):
    """A scalar field, as protobuf reads it: the last value wins; int32 varints are sign-extended to 64 bits."""
    if number not in fields:
        return default
    value = fields[number][-1]
    if isinstance(value, bytes) != isinstance(default, bytes):
        raise ValueError(f"field {number} has the wrong wire type")
    if isinstance(default, bool):
        return bool(value)
    if isinstance(value, int) and value >= 2**63:
        return value - 2**64
    return value


def read_spm_model(path: Path) -> SpmModel:
    """The encoding-relevant part of a SentencePiece unigram model; a one-line ValueError naming the file
    when it is not one."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_SPM_BYTES:
            raise ValueError(f"larger than {MAX_SPM_BYTES >> 20} MiB")
        model = _fields(path.read_bytes())
        trainer = _fields(_last(model, 2, b""))
        normalizer = _fields(_last(model, 3, b""))
        pieces = []
        for raw in model.get(1, []):
            if not isinstance(raw, bytes):
                raise ValueError("a piece is not a message")
            piece = _fields(raw)
            score = struct.unpack("<f", _last(piece, 2, 0).to_bytes(4, "little"))[0]
            pieces.append((_last(piece, 1, b"").decode("utf-8"), score, _last(piece, 3, NORMAL)))
        if not pieces:
            raise ValueError("no pieces")
        if len({piece for piece, _, _ in pieces}) != len(pieces):
            raise ValueError("a piece is defined twice")
        if _last(trainer, 3, UNIGRAM) != UNIGRAM:
            raise ValueError("not a unigram model (SigLIP's are)")
        if _last(trainer, 24, False):
            raise ValueError("treat_whitespace_as_suffix is not supported")
        unk_id = _last(trainer, 40, 0)
        if not 0 <= unk_id < len(pieces) or pieces[unk_id][2] != UNKNOWN:
            raise ValueError(f"unk_id {unk_id} is not the unknown piece")
        spm = SpmModel(pieces=pieces, unk_id=unk_id, byte_fallback=_last(trainer, 35, False),
                       precompiled_charsmap=_last(normalizer, 2, b""), add_dummy_prefix=_last(normalizer, 3, True),
                       remove_extra_whitespaces=_last(normalizer, 4, True),
                       escape_whitespaces=_last(normalizer, 5, True))
        if spm.precompiled_charsmap:
            Charsmap(spm.precompiled_charsmap)  # checked here, so that a bad one is named with its file
        return spm
    except (ValueError, IndexError, OverflowError, struct.error, OSError) as e:
        raise ValueError(f"{path}: not a valid SentencePiece model ({str(e).splitlines()[0]})") from None


def _utf8_length(lead: int) -> int:
    return 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


class Charsmap:
    """SentencePiece's precompiled character map: `normalize(text)` replaces, at every position, the longest
    key that starts there (as SentencePiece's normalizer does) and keeps the other characters. Pieces in
    `user_defined` are copied unmapped, as SentencePiece does."""

    def __init__(self, blob: bytes, user_defined: list[str] = ()):
        size = int.from_bytes(blob[:4], "little")
        if size % 4 or not 4 < 4 + size <= len(blob):
            raise ValueError("malformed precompiled_charsmap")
        self._units = struct.unpack(f"<{size // 4}I", blob[4:4 + size])
        self._strings = blob[4 + size:]
        # darts-clone keeps no child lists: the unit at `pos` labelled `byte` is a child of the node whose
        # base is pos ^ byte (value units have bit 31 set; leaf slots are labelled 0)
        self._children: dict[int, list[tuple[int, int]]] = {}
        for pos, unit in enumerate(self._units):
            if not unit >> 31 and unit & 0xFF:
                self._children.setdefault(pos ^ (unit & 0xFF), []).append((unit & 0xFF, pos))
        self._single: dict[int, str] = {}  # one-code-point keys, for str.translate
        self._tails: set[str] = set()  # code points that continue a key of several code points
        stack = [(base, b"") for base in self._collect(self._child(0), b"")]
        seen = set(stack)
        while stack:  # the DAG of what follows a first code point, each node once
            base, partial = stack.pop()
            for byte, pos in self._children.get(base, ()):
                char = partial + bytes([byte])
                if len(char) == _utf8_length(char[0]):
                    self._tails.add(char.decode("utf-8"))
                    char = b""
                if (self._child(pos), char) not in seen:
                    seen.add((self._child(pos), char))
                    stack.append((self._child(pos), char))
        self._user_defined = sorted((s.encode("utf-8") for s in user_defined), key=len, reverse=True)
        # a text holding none of these maps as str.translate maps it
        self._slow = self._tails | {c for s in user_defined for c in s if ord(c) in self._single}

    def _child(self, pos: int) -> int:
        """The base of the node that the unit at `pos` leads to (darts-clone's offset())."""
        unit = self._units[pos]
        return pos ^ ((unit >> 10) << ((unit & (1 << 9)) >> 6))

    def _value(self, base: int) -> str:
        start = self._units[base] & 0x7FFFFFFF
        return self._strings[start:self._strings.index(b"\0", start)].decode("utf-8")

    def _collect(self, base: int, key: bytes) -> list[int]:
        """Fills the one-code-point keys below `base` (`key`: the bytes so far); returns the nodes that end
        a first code point."""
        ends = []
        for byte, pos in self._children.get(base, ()):
            sub = key + bytes([byte])
            if len(sub) < _utf8_length(sub[0]):
                ends += self._collect(self._child(pos), sub)
                continue
            if (self._units[pos] >> 8) & 1:
                self._single[ord(sub.decode("utf-8"))] = self._value(self._child(pos))
            ends.append(self._child(pos))
        return ends

    def _longest(self, data: bytes, i: int) -> tuple[int, bytes]:
        """(length, replacement) of the longest key at data[i:], else of the one character there."""
        length = _utf8_length(data[i])
        value, base = data[i:i + length], self._child(0)
        for j in range(i, len(data)):
            pos = base ^ data[j]
            if pos >= len(self._units) or self._units[pos] & 0x800000FF != data[j]:  # darts-clone: label()
                break
            base = self._child(pos)
            if (self._units[pos] >> 8) & 1:  # has_leaf()
                length, value = j + 1 - i, self._value(base).encode("utf-8")
        return length, value

    def normalize(self, text: str) -> str:
        if self._slow.isdisjoint(text):
            return text.translate(self._single)
        data, out, i = text.encode("utf-8"), [], 0
        while i < len(data):
            user = next((s for s in self._user_defined if data.startswith(s, i)), b"")
            length, value = (len(user), user) if user else self._longest(data, i)
            out.append(value)
            i += length
        return b"".join(out).decode("utf-8")


def require_tokenizers():
    """The `tokenizers` module, else a one-line ImportError saying how to get it."""
    try:
        import tokenizers
    except ImportError:
        raise ImportError("text tokenizers need the tokenizers package: pip install 'vitkit[text]'") from None
    return tokenizers


def spm_tokenizer(model: SpmModel, add_dummy_prefix: bool | None = None):
    """A `tokenizers.Tokenizer` that encodes charsmap-normalized text like `SentencePieceProcessor.encode`
    (ids, no special tokens). `add_dummy_prefix` overrides the model's (transformers' `legacy=False`)."""
    require_tokenizers()
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import Unigram

    # SentencePiece never matches control, unknown or unused pieces against text; a tokenizers Unigram
    # matches every piece, so those get names that no text reaches (ids kept; nothing here decodes)
    vocab = [(f"<{i}>\0{piece}" if kind in (UNKNOWN, CONTROL, UNUSED) else piece, score)
             for i, (piece, score, kind) in enumerate(model.pieces)]
    tokenizer = Tokenizer(Unigram(vocab, unk_id=model.unk_id, byte_fallback=model.byte_fallback))
    # The rest of SentencePiece's normalizer, in its order: leading spaces dropped and runs of spaces squeezed;
    # the dummy prefix (also before a text that starts with "▁", which Metaspace would skip); spaces escaped;
    # every trailing space symbol dropped (the dummy prefix of an empty text, a "▁" the text ends with).
    space = "▁" if model.escape_whitespaces else " "
    steps = []
    if model.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if model.add_dummy_prefix if add_dummy_prefix is None else add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))
    if model.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    if model.remove_extra_whitespaces:
        steps.append(normalizers.Replace(Regex(re.escape(space) + r"+\z"), ""))
    tokenizer.normalizer = normalizers.Sequence(steps)
    if model.user_defined:  # always emitted whole: isolated before the lattice
        pattern = "|".join(re.escape(piece) for piece in sorted(model.user_defined, key=len, reverse=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    return tokenizer
