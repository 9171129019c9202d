"""One task, two architectures: identical target text, loss only on targets, model details."""

import numpy as np
import pytest

from arch_compare.data.converters import MODE_TOKENS, feature_converter_for
from arch_compare.data.vocabularies import load_vocabulary
from arch_compare.models import get_preset
from arch_compare_tasks import catalogue  # noqa: F401  (registers the shipped tasks)
from arch_compare_tasks.registry import records, seqio_task

TASK = "imitation_sharegpt_fixture"
LENGTHS = {"inputs": 192, "targets": 96}


@pytest.fixture(scope="module")
def vocabularies(sentencepiece_model_path, bpe_tokenizer_path):
    return {"sentencepiece": load_vocabulary("sentencepiece", sentencepiece_model_path),
            "bpe": load_vocabulary("hf_tokenizer", bpe_tokenizer_path)}


def converted(config, vocabulary, pack=False, lengths=LENGTHS):
    task = seqio_task(TASK, vocabulary)
    dataset = task.get_dataset(lengths, split="train", shuffle=False)
    converter = feature_converter_for(config, vocabulary, pack=pack)
    return list(converter(dataset, lengths).as_numpy_iterator())


def target_text(batch, vocabulary):
    """The supervised tokens of one converted example (either architecture), decoded."""
    tokens = batch["decoder_target_tokens"][batch["decoder_loss_weights"] > 0]
    return vocabulary.decode(tokens.tolist())


@pytest.mark.parametrize("vocab_name", ["sentencepiece", "bpe"])
def test_same_task_gives_identical_target_text_to_both_architectures(vocabularies, vocab_name):
    vocabulary = vocabularies[vocab_name]
    expected = [row["targets"] for row in records(TASK, "train")]
    decoder_only = converted(get_preset("llama-tiny"), vocabulary)
    encoder_decoder = converted(get_preset("t5-tiny"), vocabulary)
    assert len(decoder_only) == len(encoder_decoder) == len(expected) > 0
    for a, b, text in zip(decoder_only, encoder_decoder, expected):
        assert target_text(a, vocabulary) == target_text(b, vocabulary) == text


def test_across_vocabularies_the_supervised_text_is_the_same(vocabularies):
    gpt2 = [target_text(b, vocabularies["bpe"])
            for b in converted(get_preset("gpt2-tiny"), vocabularies["bpe"])]
    t5 = [target_text(b, vocabularies["sentencepiece"])
          for b in converted(get_preset("t5-tiny"), vocabularies["sentencepiece"])]
    assert gpt2 == t5


def test_decoder_only_loss_weights_are_zero_on_every_prompt_token(vocabularies):
    vocabulary = vocabularies["bpe"]
    rows = records(TASK, "train")
    for row, batch in zip(rows, converted(get_preset("gpt2-tiny"), vocabulary)):
        prompt = len(vocabulary.encode(row["inputs"])) + 1  # + EOS
        target = len(vocabulary.encode(row["targets"])) + 1
        weights = batch["decoder_loss_weights"]
        assert not weights[:prompt].any()
        assert weights[prompt:prompt + target].all()
        assert not weights[prompt + target:].any()
        # the prompt tokens are there, unweighted: the model reads them as its prefix
        assert vocabulary.decode(batch["decoder_target_tokens"][:prompt - 1].tolist()) == (
            row["inputs"])


def test_decoder_starts_with_the_models_start_token(vocabularies):
    gpt2 = get_preset("gpt2-tiny", {"decoder_start_id": 299})
    for batch in converted(gpt2, vocabularies["bpe"]):
        assert batch["decoder_input_tokens"][0] == 299
        # everything else is the targets shifted right by one
        np.testing.assert_array_equal(batch["decoder_input_tokens"][1:],
                                      batch["decoder_target_tokens"][:-1])
    t5 = get_preset("t5-tiny")
    assert all(b["decoder_input_tokens"][0] == 0 for b in converted(t5, vocabularies["bpe"]))


def test_packed_segments_each_start_with_the_start_token(vocabularies):
    gpt2 = get_preset("gpt2-tiny", {"decoder_start_id": 299})
    lengths = {"inputs": 256, "targets": 256}
    batches = converted(gpt2, vocabularies["bpe"], pack=True, lengths=lengths)
    segment_starts = 0
    for batch in batches:
        starts = (batch["decoder_positions"] == 0) & (batch["decoder_segment_ids"] > 0)
        assert (batch["decoder_input_tokens"][starts] == 299).all()
        segment_starts += int(starts.sum())
    assert segment_starts == len(records(TASK, "train")) and len(batches) < segment_starts


def test_ul2_reads_its_mode_token_first(vocabularies):
    vocabulary = vocabularies["sentencepiece"]
    mode = vocabulary.encode(MODE_TOKENS["ul2"])
    rows = records(TASK, "train")
    for row, batch in zip(rows, converted(get_preset("ul2-tiny"), vocabulary)):
        inputs = batch["encoder_input_tokens"]
        assert inputs[:len(mode)].tolist() == mode
        # SentencePiece normalises whitespace (T5's vocabulary has no newline), so compare with
        # the text as this vocabulary can spell it.
        spelled = vocabulary.decode(vocabulary.encode(row["inputs"]))
        assert vocabulary.decode(inputs[len(mode):].tolist()) == spelled
    t5_batch = converted(get_preset("t5-tiny"), vocabulary)[0]
    assert t5_batch["encoder_input_tokens"][:len(mode)].tolist() != mode
    with pytest.raises(ValueError, match="mode token"):
        feature_converter_for(get_preset("ul2-tiny"))
