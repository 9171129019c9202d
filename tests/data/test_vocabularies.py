import copy
import pickle
import shutil

import numpy as np
import pytest
import seqio
import tensorflow as tf

from arch_compare.data.vocabularies import (
    FAMILY_VOCABULARY_KINDS, VOCABULARY_KINDS, HuggingFaceTokenizerVocabulary, VocabularyError,
    load_vocabulary, vocabulary_for_model)
from arch_compare.models.zoo import PRESETS

# Every character here occurs in the fixture corpus, so both tiny vocabularies can spell it.
# No leading, trailing or repeated spaces: SentencePiece normalizes whitespace as T5's does.
COMMON_TEXTS = [
    "",
    "The model imitates the target model's style.",
    "Question: What is the capital of France? Answer: Paris!",
    "naïve café, crème brûlée and jalapeño",
    "日本語のテキスト and 模型学习风格",
    "the result made everyone smile 🙂 and cheer 🎉",
    "α β γ: 3 × 7 = 21, €5",
]
# Byte-level BPE spells any string exactly, including whitespace and unseen characters.
BYTE_LEVEL_TEXTS = [
    "  leading, trailing and  double spaces  ",
    "tabs\tand\nnewlines\r\n",
    "unseen: Ω ∑ 𝔘 ꙮ, and a lone é",
    "<|endoftext|> written out is not EOS",
]
SPECIAL_TOKEN_TEXT = "chat log: <|endoftext|> then more"



@pytest.fixture(scope="module")
def bpe(bpe_tokenizer_path):
    return load_vocabulary("hf_tokenizer", bpe_tokenizer_path)


@pytest.fixture(scope="module")
def spm(sentencepiece_model_path):
    return load_vocabulary("sentencepiece", sentencepiece_model_path)


@pytest.fixture(scope="module", params=["sentencepiece", "hf_tokenizer"])
def vocab(request, spm, bpe):
    return {"sentencepiece": spm, "hf_tokenizer": bpe}[request.param]


def _tokenize_with_seqio(vocabulary, texts, with_eos=False):
    """Token ids of `texts` through seqio's tokenize preprocessor on a tf.data pipeline."""
    dataset = tf.data.Dataset.from_tensor_slices({"text": texts})
    features = {"text": seqio.Feature(vocabulary, add_eos=True)}
    dataset = seqio.preprocessors.tokenize(dataset, features, with_eos=with_eos)
    return [example["text"].tolist() for example in dataset.as_numpy_iterator()]


# -- the fixtures are laid out as the test docs say ------------------------------------------


def test_bpe_fixture_is_laid_out_like_gpt2(bpe):
    assert isinstance(bpe, HuggingFaceTokenizerVocabulary)
    assert bpe.vocab_size == 300
    assert bpe.eos_id == 299  # last id, as GPT-2's 50256
    assert bpe.pad_id == 0 and bpe.decode([0]) == "!"  # seqio's pad is a real token here
    assert bpe.unk_id is None  # byte-level BPE needs no UNK
    assert bpe.bos_id is None


def test_sentencepiece_fixture_has_t5_special_ids(spm):
    assert isinstance(spm, seqio.SentencePieceVocabulary)
    assert spm.vocab_size == 384
    assert (spm.pad_id, spm.eos_id, spm.unk_id) == (0, 1, 2)


# -- round trips and the tf.data path --------------------------------------------------------


@pytest.mark.parametrize("text", COMMON_TEXTS)
def test_round_trip(vocab, text):
    ids = vocab.encode(text)
    assert all(0 <= i < vocab.vocab_size for i in ids)
    assert vocab.eos_id not in ids
    assert vocab.decode(ids) == text


@pytest.mark.parametrize("text", BYTE_LEVEL_TEXTS)
def test_byte_level_round_trip_is_exact(bpe, text):
    ids = bpe.encode(text)
    assert bpe.eos_id not in ids  # special tokens are never produced from text
    assert bpe.decode(ids) == text


def test_empty_string_encodes_to_nothing(vocab):
    assert list(vocab.encode("")) == []
    assert vocab.decode([]) == ""
    assert _tokenize_with_seqio(vocab, [""]) == [[]]


def test_tf_data_path_matches_python(vocab):
    byte_level = isinstance(vocab, HuggingFaceTokenizerVocabulary)
    texts = COMMON_TEXTS + (BYTE_LEVEL_TEXTS if byte_level else [])
    expected = [list(vocab.encode(text)) for text in texts]
    assert _tokenize_with_seqio(vocab, texts) == expected
    with_eos = _tokenize_with_seqio(vocab, texts, with_eos=True)
    assert with_eos == [ids + [vocab.eos_id] for ids in expected]


def test_tf_path_has_static_rank_and_int32(bpe):
    dataset = tf.data.Dataset.from_tensor_slices({"text": COMMON_TEXTS})
    dataset = seqio.preprocessors.tokenize(dataset, {"text": seqio.Feature(bpe)})
    spec = dataset.element_spec["text"]
    assert spec.dtype == tf.int32 and spec.shape.as_list() == [None]


def test_tf_encodes_a_batch_of_strings_as_ragged(bpe):
    texts = COMMON_TEXTS + BYTE_LEVEL_TEXTS
    ragged = bpe.encode_tf(tf.constant(texts))
    assert isinstance(ragged, tf.RaggedTensor) and ragged.dtype == tf.int32
    assert ragged.to_list() == [bpe.encode(text) for text in texts]


def test_hf_ids_match_transformers(bpe, bpe_tokenizer_path):
    from transformers import PreTrainedTokenizerFast

    # split_special_tokens: transformers' switch for "special-token text is plain text".
    reference = PreTrainedTokenizerFast(tokenizer_file=str(bpe_tokenizer_path),
                                        split_special_tokens=True)
    for text in COMMON_TEXTS + BYTE_LEVEL_TEXTS + [SPECIAL_TOKEN_TEXT]:
        ids = reference.encode(text, add_special_tokens=False)
        assert bpe.encode(text) == ids, text
        assert bpe.decode(ids) == reference.decode(ids, skip_special_tokens=True)
    assert reference.convert_tokens_to_ids("<|endoftext|>") == bpe.eos_id


def test_special_token_text_is_not_eos(bpe, bpe_tokenizer_path):
    from transformers import PreTrainedTokenizerFast

    # By default transformers would end the example at the literal; we must not.
    default = PreTrainedTokenizerFast(tokenizer_file=str(bpe_tokenizer_path))
    assert bpe.eos_id in default.encode(SPECIAL_TOKEN_TEXT, add_special_tokens=False)
    assert bpe.eos_id not in bpe.encode(SPECIAL_TOKEN_TEXT)
    assert _tokenize_with_seqio(bpe, [SPECIAL_TOKEN_TEXT]) == [bpe.encode(SPECIAL_TOKEN_TEXT)]


# -- decoding -----------------------------------------------------------------------------------


def test_decode_stops_at_eos(vocab):
    first, second = vocab.encode("Paris is the capital"), vocab.encode("of France")
    ids = first + [vocab.eos_id] + second + [vocab.eos_id]
    assert vocab.decode(ids) == vocab.decode(first)
    assert vocab.decode(ids) != vocab.decode(first + second)


def test_decode_tf_stops_at_eos_and_padding_does_not_leak(vocab):
    # seqio's decode_tf overwrites everything after EOS with pad id 0, which for the GPT-2-like
    # vocabulary is "!"; none of it may appear in the text.
    rows = [vocab.encode("Paris is the capital") + [vocab.eos_id],
            vocab.encode("café") + [vocab.eos_id] + vocab.encode("gone"),
            vocab.encode("the blue notebook")]
    length = max(map(len, rows)) + 3
    padded = np.array([row + [vocab.pad_id] * (length - len(row)) for row in rows], np.int32)
    texts = vocab.decode_tf(tf.constant(padded)).numpy().tolist()
    assert texts[0].decode() == "Paris is the capital"
    assert texts[1].decode() == "café"
    # No EOS: the padding is decoded as whatever id 0 is (documented in the module).
    assert texts[2].decode() == vocab.decode(padded[2].tolist())
    single = vocab.decode_tf(tf.constant(padded[1])).numpy().decode()
    assert single == "café"


def test_decode_tf_keeps_leading_dimensions(bpe):
    ids = tf.constant([[[bpe.encode("a")[0], bpe.eos_id]] * 3] * 2, tf.int32)  # [2, 3, 2]
    texts = bpe.decode_tf(ids)
    assert texts.shape == (2, 3) and texts.dtype == tf.string
    assert set(texts.numpy().ravel().tolist()) == {b"a"}
    assert bpe.decode_tf(tf.zeros([0, 4], tf.int32)).shape == (0,)


def test_decode_ignores_ids_outside_the_vocabulary(bpe):
    ids = bpe.encode("honey")
    noisy = [-1] + ids[:1] + [bpe.vocab_size, 10**6] + ids[1:]
    assert bpe.decode(noisy) == "honey"
    assert bpe.decode_tf(tf.constant(noisy, tf.int32)).numpy().decode() == "honey"


def test_extra_ids_are_sentinels_at_the_end(bpe_tokenizer_path):
    vocabulary = load_vocabulary("hf_tokenizer", bpe_tokenizer_path, extra_ids=3)
    assert vocabulary.vocab_size == 303
    assert vocabulary.eos_id == 299
    text = "Paris is <extra_id_0> of <extra_id_2>"
    ids = vocabulary.encode(text)
    assert 302 in ids and 300 in ids  # <extra_id_0> is the highest id, as seqio expects
    assert vocabulary.decode(ids) == text
    assert _tokenize_with_seqio(vocabulary, [text]) == [ids]


# -- identity: seqio compares and caches vocabularies ----------------------------------------


def test_equality_follows_contents_and_options(bpe, bpe_tokenizer_path, tmp_path):
    copied = tmp_path / "copy.json"
    shutil.copy(bpe_tokenizer_path, copied)
    same = HuggingFaceTokenizerVocabulary(copied)
    assert same == bpe and hash(same) == hash(bpe)
    assert hash(seqio.Feature(same)) == hash(seqio.Feature(bpe))
    assert HuggingFaceTokenizerVocabulary(copied, extra_ids=1) != bpe
    assert HuggingFaceTokenizerVocabulary(copied, bos_token="<|endoftext|>") != bpe
    assert bpe != seqio.PassThroughVocabulary(bpe.vocab_size)


def test_equality_sees_a_different_file(bpe, tmp_path):
    other = tmp_path / "tokenizer.json"
    tokenizer = copy.deepcopy(bpe.tokenizer)
    tokenizer.add_special_tokens(["<|pad|>"])
    tokenizer.save(str(other))
    assert HuggingFaceTokenizerVocabulary(other) != bpe


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda v: pickle.loads(pickle.dumps(v))])
def test_copies_are_equal_and_work(bpe, clone):
    # gin deep-copies configurable arguments; tf.data may pickle.
    cloned = clone(bpe)
    assert cloned == bpe and hash(cloned) == hash(bpe)
    for text in ["café 🙂", SPECIAL_TOKEN_TEXT]:
        assert cloned.encode(text) == bpe.encode(text)


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(VOCABULARY_KINDS))
@pytest.mark.parametrize("path", ["gs://bucket/vocab/spm.model", "https://example.org/t.json",
                                  "http://example.org/t.json"])
def test_remote_paths_are_refused(kind, path):
    with pytest.raises(VocabularyError, match="local paths only") as error:
        load_vocabulary(kind, path)
    assert path in str(error.value)


@pytest.mark.parametrize("kind", sorted(VOCABULARY_KINDS))
def test_missing_file_names_the_path(kind, tmp_path):
    path = tmp_path / "nowhere" / "vocab.file"
    with pytest.raises(VocabularyError, match="not found") as error:
        load_vocabulary(kind, path)
    assert str(path) in str(error.value)


def test_directory_points_at_the_file_inside(tmp_path):
    with pytest.raises(VocabularyError, match="tokenizer.json"):
        load_vocabulary("hf_tokenizer", tmp_path)


def test_unknown_kind_lists_known_kinds(bpe_tokenizer_path):
    with pytest.raises(VocabularyError, match="hf_tokenizer, sentencepiece"):
        load_vocabulary("wordpiece", bpe_tokenizer_path)


def test_malformed_tokenizer_json_names_file_and_line(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"version": "1.0",\n "model": }\n')
    with pytest.raises(VocabularyError, match=r"tokenizer\.json.*line 2"):
        load_vocabulary("hf_tokenizer", path)


def test_bad_sentencepiece_model_names_file(tmp_path):
    path = tmp_path / "broken.model"
    path.write_bytes(b"this is not a protobuf")
    with pytest.raises(VocabularyError, match="broken.model: not a SentencePiece model"):
        load_vocabulary("sentencepiece", path)


def test_missing_eos_token_is_named(bpe_tokenizer_path):
    with pytest.raises(VocabularyError, match="</s>"):
        load_vocabulary("hf_tokenizer", bpe_tokenizer_path, eos_token="</s>")


# -- families -------------------------------------------------------------------------------


def test_every_preset_family_has_a_vocabulary_kind():
    families = {config.family for config in PRESETS.values()}
    assert families <= set(FAMILY_VOCABULARY_KINDS)
    assert set(FAMILY_VOCABULARY_KINDS.values()) <= set(VOCABULARY_KINDS)


def test_vocabulary_for_model_picks_the_family_kind(bpe_tokenizer_path, sentencepiece_model_path,
                                                    bpe):
    gpt2 = vocabulary_for_model(PRESETS["gpt2-tiny"], bpe_tokenizer_path)
    assert isinstance(gpt2, HuggingFaceTokenizerVocabulary) and gpt2.bos_id == gpt2.eos_id
    assert gpt2.encode("café") == bpe.encode("café")
    t5 = vocabulary_for_model(PRESETS["t5-tiny"], sentencepiece_model_path)
    # T5-style families reserve 100 sentinels, as the released vocabularies do.
    assert isinstance(t5, seqio.SentencePieceVocabulary) and t5.vocab_size == 384 + 100
    llama = vocabulary_for_model(PRESETS["llama-tiny"], sentencepiece_model_path)
    assert llama.vocab_size == 384
    assert vocabulary_for_model(PRESETS["ul2-tiny"], sentencepiece_model_path,
                                extra_ids=0).vocab_size == 384


def test_vocabulary_larger_than_the_model_is_refused(bpe_tokenizer_path):
    small = PRESETS["gpt2-tiny"].replace(vocab_size=128, eos_id=127, pad_id=127,
                                         decoder_start_id=127)
    with pytest.raises(VocabularyError, match=r"300 ids.*128 rows") as error:
        vocabulary_for_model(small, bpe_tokenizer_path)
    assert str(bpe_tokenizer_path) in str(error.value)


def test_unknown_family_lists_known_families(bpe_tokenizer_path):
    config = PRESETS["gpt2-tiny"].replace(family="bloom")
    with pytest.raises(VocabularyError, match="bloom.*gpt2"):
        vocabulary_for_model(config, bpe_tokenizer_path)
