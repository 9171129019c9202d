"""seqio vocabularies for every model family, read from local files only.

Two kinds cover the families we compare:

- `sentencepiece`: seqio's own `SentencePieceVocabulary` over a `.model` file (T5, T5 v1.1,
  Flan-T5, UL2, LLaMA 1/2).
- `hf_tokenizer`: `HuggingFaceTokenizerVocabulary`, an adapter for a Hugging Face `tokenizers`
  `tokenizer.json` (GPT-2's byte-level BPE, LLaMA 3's BPE). seqio ships no such adapter
  (seqio issue #188); this one works in Python and inside tf.data pipelines, so
  `seqio.preprocessors.tokenize` treats it like any other vocabulary.

Padding. seqio pads every feature with id 0 and calls that `pad_id`, whatever the vocabulary.
For T5's SentencePiece model id 0 is a real pad symbol; for GPT-2 (and LLaMA 3) id 0 is a real
token ("!"), and for LLaMA 1/2 it is `<unk>`. That is harmless because padding is never content:
feature converters give padded positions loss weight 0 and segment id 0, so they are neither
trained on nor attended to as text. The one place it shows is decoding a padded sequence that
carries no EOS: the trailing zeros decode as "!" for GPT-2. Decode model outputs cut at EOS (as
seqio does) or at their length, never raw padded rows without EOS.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Callable, Sequence

import numpy as np
import seqio
import tensorflow as tf
from google.protobuf.message import DecodeError
from tokenizers import AddedToken, Tokenizer

from arch_compare.models.config import ModelConfig

GPT2_EOS_TOKEN = "<|endoftext|>"

# Anything that looks like `scheme://...` (gs://, http://, https://, s3://, ...).
_REMOTE_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class VocabularyError(ValueError):
    """A vocabulary that cannot be loaded or does not fit its model; names the file."""


def local_file(path: str | os.PathLike) -> str:
    """`path` as an absolute local path, or a VocabularyError saying why it cannot be used."""
    text = os.fspath(path)
    if _REMOTE_PATH.match(text):
        raise VocabularyError(
            f"{text}: vocabularies are read from local paths only; copy the file to local disk "
            f"and pass that path")
    if not os.path.exists(text):
        raise VocabularyError(f"{text}: vocabulary file not found")
    if os.path.isdir(text):
        raise VocabularyError(f"{text}: is a directory; pass the vocabulary file inside it "
                              f"(for example {os.path.join(text, 'tokenizer.json')})")
    return os.path.abspath(text)


class HuggingFaceTokenizerVocabulary(seqio.Vocabulary):
    """A Hugging Face `tokenizer.json` as a seqio vocabulary.

    Ids are the tokenizer's own ids; encoding never adds special tokens (seqio appends EOS itself
    when a feature asks for it) and spells special-token text such as "<|endoftext|>" as plain
    text. `extra_ids` appends seqio-style sentinels `<extra_id_0>` ... as added tokens, numbered
    from the end so `<extra_id_0>` is the highest id, as T5's span corruption expects. Decoding stops before the first EOS, drops ids outside the vocabulary
    (or maps them to UNK where the tokenizer has one, as seqio does) and omits special tokens.

    Two vocabularies are equal when their file contents, special tokens and extra ids are equal
    (the path does not matter), so seqio's caches and mixture checks treat copies alike.
    """

    def __init__(self, tokenizer_file: str | os.PathLike, *, eos_token: str = GPT2_EOS_TOKEN,
                 bos_token: str | None = None, extra_ids: int = 0):
        path = local_file(tokenizer_file)
        if extra_ids < 0:
            raise VocabularyError(f"{path}: extra_ids must be >= 0, got {extra_ids}")
        super().__init__(extra_ids=extra_ids)
        with open(path, "rb") as f:
            content = f.read()
        try:
            tokenizer = Tokenizer.from_str(content.decode("utf-8"))
        except Exception as error:  # tokenizers raises a bare Exception with line and column
            raise VocabularyError(f"{path}: not a Hugging Face tokenizer.json: {error}") from None
        self._path = path
        self._digest = hashlib.sha256(content).hexdigest()
        self._eos_token = eos_token
        self._bos_token = bos_token
        self._size_without_extras = max(tokenizer.get_vocab(with_added_tokens=True).values(),
                                        default=-1) + 1
        self._tokenizer = _with_extra_ids(tokenizer, extra_ids, path, self._size_without_extras)
        _spell_special_tokens_as_text(self._tokenizer)
        self._eos_id = self._require_token(eos_token, "eos_token")
        self._bos_id = None if bos_token is None else self._require_token(bos_token, "bos_token")
        self._unk_id = _unk_id(json.loads(content), self._tokenizer)

    def _require_token(self, token: str, argument: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise VocabularyError(f"{self._path}: {argument} {token!r} is not in the vocabulary; "
                                  f"pass {argument}= with a token the tokenizer defines")
        return token_id

    # -- ids and sizes -------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer` (with extra ids added)."""
        return self._tokenizer

    @property
    def tokenizer_file(self) -> str:
        return self._path

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def unk_id(self) -> int | None:
        # Byte-level BPE (GPT-2) can spell every string, so it has no UNK.
        return self._unk_id

    @property
    def _base_vocab_size(self) -> int:
        # Includes the extra ids, as seqio's SentencePieceVocabulary does: they are real tokens
        # of the tokenizer, so seqio's decode must not map them to UNK.
        return self._size_without_extras + self.extra_ids

    @property
    def vocab_size(self) -> int:
        return self._base_vocab_size

    # -- Python path ---------------------------------------------------------------------------

    def _encode(self, s: str | bytes) -> list[int]:
        return self._tokenizer.encode(_as_text(s), add_special_tokens=False).ids

    def _decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        # seqio's decode already cuts after the first EOS; decode_tf replaces what follows it
        # with pad (a real token here), so cut again before EOS.
        if self._eos_id in ids:
            ids = ids[:ids.index(self._eos_id)]
        ids = [i for i in ids if 0 <= i < self.vocab_size]
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    # -- TensorFlow path (tf.data): the same Python code through tf.numpy_function -------------

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        s = tf.convert_to_tensor(s, dtype=tf.string)
        if s.shape.rank == 0:
            ids = tf.numpy_function(self._encode_scalar, [s], tf.int32, stateful=False)
            ids.set_shape([None])  # [length]
            return ids
        if s.shape.rank == 1:
            values, lengths = tf.numpy_function(
                self._encode_vector, [s], [tf.int32, tf.int64], stateful=False)
            values.set_shape([None])  # [total_length]
            lengths.set_shape(s.shape)  # [batch]
            return tf.RaggedTensor.from_row_lengths(values, lengths)  # [batch, (length)]
        raise VocabularyError(f"{self._path}: encode_tf takes a scalar or 1-D string tensor, "
                              f"got shape {s.shape}")

    def _encode_scalar(self, s: bytes) -> np.ndarray:
        return np.asarray(self._encode(s), dtype=np.int32)

    def _encode_vector(self, strings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._tokenizer.encode_batch([_as_text(s) for s in strings],
                                                 add_special_tokens=False)
        lengths = np.asarray([len(e.ids) for e in encodings], dtype=np.int64)
        values = np.asarray([i for e in encodings for i in e.ids], dtype=np.int32)
        return values, lengths

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        ids = tf.convert_to_tensor(ids)
        shape = tf.shape(ids)
        rows = tf.reshape(ids, [tf.reduce_prod(shape[:-1]), shape[-1]])  # [rows, length]
        texts = tf.numpy_function(self._decode_rows, [rows], tf.string, stateful=False)
        texts = tf.reshape(texts, shape[:-1])  # [...] one string per row
        texts.set_shape(ids.shape[:-1])
        return texts

    def _decode_rows(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray([self._decode(row).encode("utf-8") for row in rows], dtype=object)

    def __setstate__(self, state: dict) -> None:
        # gin deep-copies configurable arguments; a pickled Tokenizer forgets the setting.
        self.__dict__.update(state)
        _spell_special_tokens_as_text(self._tokenizer)

    # -- identity: seqio compares vocabularies and caches by them ------------------------------

    @property
    def _key(self) -> tuple:
        return (self._digest, self._eos_token, self._bos_token, self.extra_ids)

    def __eq__(self, other) -> bool:
        if not isinstance(other, HuggingFaceTokenizerVocabulary):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return (f"HuggingFaceTokenizerVocabulary(file={self._path!r}, "
                f"eos_token={self._eos_token!r}, extra_ids={self.extra_ids}, "
                f"sha256={self._digest[:12]})")

    __str__ = __repr__


def _as_text(s: str | bytes) -> str:
    # tf.data hands over bytes. `tokenizers` takes str, so invalid UTF-8 becomes U+FFFD, much as
    # SentencePiece turns it into UNK, instead of stopping a whole input pipeline.
    return s.decode("utf-8", errors="replace") if isinstance(s, bytes) else s


def _spell_special_tokens_as_text(tokenizer: Tokenizer) -> None:
    # Text never turns into special tokens, as with SentencePiece: chat data scraped from the
    # web contains literal "<|endoftext|>", which must not end an example early.
    tokenizer.encode_special_tokens = True


def _with_extra_ids(tokenizer: Tokenizer, extra_ids: int, path: str, base: int) -> Tokenizer:
    """Adds `<extra_id_{n-1}>` ... `<extra_id_0>` at ids base ... base + n - 1."""
    if not extra_ids:
        return tokenizer
    names = [f"<extra_id_{i}>" for i in reversed(range(extra_ids))]
    taken = [name for name in names if tokenizer.token_to_id(name) is not None]
    if taken:
        raise VocabularyError(f"{path}: already defines {taken[0]}; use extra_ids=0 with a "
                              f"tokenizer that has its own sentinels")
    tokenizer.add_tokens([AddedToken(name, normalized=False, special=False) for name in names])
    if tokenizer.token_to_id(names[0]) != base:
        raise VocabularyError(f"{path}: extra ids did not land at the end of the vocabulary")
    return tokenizer


def _unk_id(spec: dict, tokenizer: Tokenizer) -> int | None:
    """The UNK id named by the tokenizer.json model section, if any."""
    model = spec.get("model") or {}
    if model.get("unk_token") is not None:  # BPE, WordPiece, WordLevel
        return tokenizer.token_to_id(model["unk_token"])
    return model.get("unk_id")  # Unigram


# -- loading by kind ---------------------------------------------------------------------------


def _sentencepiece(path: str, *, extra_ids: int = 0, **options) -> seqio.SentencePieceVocabulary:
    vocabulary = seqio.SentencePieceVocabulary(path, extra_ids=extra_ids, **options)
    try:  # seqio loads lazily; load now so a bad file fails here, naming itself
        vocabulary.load_model()
    except (DecodeError, RuntimeError, OSError) as error:
        raise VocabularyError(f"{path}: not a SentencePiece model: {error}") from None
    return vocabulary


VOCABULARY_KINDS: dict[str, Callable[..., seqio.Vocabulary]] = {
    "sentencepiece": _sentencepiece,
    "hf_tokenizer": HuggingFaceTokenizerVocabulary,
}


def load_vocabulary(kind: str, path: str | os.PathLike, *, extra_ids: int = 0,
                    **options) -> seqio.Vocabulary:
    """The vocabulary of `kind` (a VOCABULARY_KINDS key) read from the local file `path`.

    `options` go to the kind's constructor (e.g. `eos_token=` for hf_tokenizer,
    `use_fast_tokenizer=` for sentencepiece).
    """
    if kind not in VOCABULARY_KINDS:
        raise VocabularyError(f"unknown vocabulary kind {kind!r}; known kinds: "
                              f"{', '.join(sorted(VOCABULARY_KINDS))}")
    return VOCABULARY_KINDS[kind](local_file(path), extra_ids=extra_ids, **options)


# -- one vocabulary kind per model family ------------------------------------------------------

# Keyed by ModelConfig.family (see arch_compare/models/zoo.py and models/hf/configs.py).
FAMILY_VOCABULARY_KINDS: dict[str, str] = {
    "gpt2": "hf_tokenizer",
    "llama": "sentencepiece",
    "llama2": "sentencepiece",
    "llama3": "hf_tokenizer",  # tiktoken-style BPE, shipped as tokenizer.json
    "t5": "sentencepiece",
    "t5.1.1": "sentencepiece",
    "flan-t5": "sentencepiece",
    "ul2": "sentencepiece",
}

# What each family's released vocabulary needs beyond the file: T5-style models reserve 100
# sentinels (32000 pieces + 100 = 32100 ids, inside the 32128-row table); the BPE families name
# their special tokens. Options passed to `vocabulary_for_model` override these.
_T5_OPTIONS = {"extra_ids": 100}
FAMILY_VOCABULARY_OPTIONS: dict[str, dict] = {
    "gpt2": {"eos_token": GPT2_EOS_TOKEN, "bos_token": GPT2_EOS_TOKEN},
    "llama3": {"eos_token": "<|end_of_text|>", "bos_token": "<|begin_of_text|>"},
    "t5": _T5_OPTIONS,
    "t5.1.1": _T5_OPTIONS,
    "flan-t5": _T5_OPTIONS,
    "ul2": _T5_OPTIONS,
}


def vocabulary_for_model(config: ModelConfig, path: str | os.PathLike,
                         **options) -> seqio.Vocabulary:
    """The vocabulary for `config.family` from `path`, checked to fit the embedding table.

    A vocabulary smaller than `config.vocab_size` is fine (tables are padded, e.g. T5's 32100 ids
    in 32128 rows); a larger one would index past the table and is refused.
    """
    if config.family not in FAMILY_VOCABULARY_KINDS:
        raise VocabularyError(f"no vocabulary kind for model family {config.family!r}; known "
                              f"families: {', '.join(sorted(FAMILY_VOCABULARY_KINDS))}")
    options = {**FAMILY_VOCABULARY_OPTIONS.get(config.family, {}), **options}
    vocabulary = load_vocabulary(FAMILY_VOCABULARY_KINDS[config.family], path, **options)
    if vocabulary.vocab_size > config.vocab_size:
        raise VocabularyError(
            f"{os.fspath(path)}: vocabulary has {vocabulary.vocab_size} ids but the "
            f"{config.family} model's embedding table (ModelConfig.vocab_size) has only "
            f"{config.vocab_size} rows")
    return vocabulary
