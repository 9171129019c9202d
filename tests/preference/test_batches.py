"""Pairs -> {"chosen", "rejected"} batches for a decoder-only (gpt2-tiny, byte-level BPE) and an
encoder-decoder model (t5-tiny, SentencePiece): rows equal what the trainer's own data path makes
of the same text, chosen and rejected rows share their prompt, answers come back whole, and
pairs that do not fit are dropped and counted, never cut."""

import numpy as np
import pytest

from arch_compare.data.conversations import Turn
from arch_compare.data.vocabularies import vocabulary_for_model
from arch_compare.imitation.targets import Prompt
from arch_compare.models import build_model, get_preset
from arch_compare.preference import batches as pb
from arch_compare.preference.pairs import PreferencePair
from arch_compare.trainer.data import BatchIterator, DataConfig, task_examples
from arch_compare_tasks import catalogue  # noqa: F401  (registers the fixture tasks)
from arch_compare_tasks import registry

LENGTHS = {"inputs": 48, "targets": 24}
PAIRS = [
    PreferencePair("What is the capital of France?", "Paris.", "It is Rome."),
    PreferencePair(Prompt("chat", (Turn("system", "Be brief."), Turn("user", "Say hello."))),
                   "Hello there.", "No."),
    PreferencePair("Name a colour.", "Blue.", "A dog."),
    PreferencePair("Count to three.", "One, two, three.", "One, three."),
    PreferencePair("Is water wet?", "Yes, it is.", "Never."),
]
MODELS = ["gpt2-tiny", "t5-tiny"]


@pytest.fixture(scope="module")
def model_and_vocabulary(request, sentencepiece_model_path, bpe_tokenizer_path):
    config = get_preset(request.param)
    path = bpe_tokenizer_path if config.family == "gpt2" else sentencepiece_model_path
    return build_model(config), vocabulary_for_model(config, path)


def trainer_rows(model, vocabulary, records, name):
    """What the trainer's data path makes of `records` (a registered text task, in order)."""
    registry.register_task(registry.TaskSpec(
        name=name, kind="imitation", description="test", source="test",
        splits={"train": lambda: records}), replace=True)
    dataset, _ = task_examples(registry.seqio_task(name, vocabulary), LENGTHS, "train",
                               shuffle=False, seed=0, repeat=False)
    return list(model.feature_converter(vocabulary)(dataset, LENGTHS).as_numpy_iterator())


@pytest.mark.parametrize("model_and_vocabulary", MODELS, indirect=True)
def test_rows_are_the_trainers_rows_for_the_same_text(model_and_vocabulary):
    model, vocabulary = model_and_vocabulary
    made = pb.pair_batches(model, vocabulary, PAIRS, feature_lengths=LENGTHS, batch_size=2)
    assert made.summary.dropped == {} and made.rows == (2, 2, 1)
    rows = pb.example_rows(made)
    assert [row["pair"] for row in rows] == list(range(len(PAIRS)))
    for side in pb.SIDES:
        expected = trainer_rows(model, vocabulary, [
            {"inputs": pair.inputs, "targets": getattr(pair, side)} for pair in PAIRS],
            f"preference_batches_{side}_{model.config.family}")
        assert len(expected) == len(rows)
        for row, reference in zip(rows, expected):
            assert row[side].keys() == reference.keys()
            for name in reference:
                np.testing.assert_array_equal(row[side][name], reference[name], err_msg=name)


@pytest.mark.parametrize("model_and_vocabulary", MODELS, indirect=True)
def test_batch_keys_are_a_training_batchs_keys(model_and_vocabulary):
    model, vocabulary = model_and_vocabulary
    data = DataConfig("imitation_sharegpt_fixture", LENGTHS, batch_size=2, shuffle=False)
    iterator = BatchIterator(registry.seqio_provider(data.task, vocabulary),
                             model.feature_converter(vocabulary), data)
    training = next(iterator)
    iterator.close()
    made = pb.pair_batches(model, vocabulary, PAIRS, feature_lengths=LENGTHS, batch_size=2)
    for batch in made.batches:
        assert set(batch) == {"chosen", "rejected"}
        for side in pb.SIDES:
            assert batch[side].keys() == training.keys()
            for name, value in batch[side].items():
                assert value.shape == training[name].shape and value.dtype == training[name].dtype


@pytest.mark.parametrize("model_and_vocabulary", MODELS, indirect=True)
def test_chosen_and_rejected_share_the_prompt_and_answers_decode_back(model_and_vocabulary):
    model, vocabulary = model_and_vocabulary
    made = pb.pair_batches(model, vocabulary, PAIRS, feature_lengths=LENGTHS, batch_size=4)
    eos = vocabulary.eos_id
    for row in pb.example_rows(made):
        pair = PAIRS[row["pair"]]
        # The reference: the vocabulary's own tokenizer on the rendered prompt.
        prompt = vocabulary.encode(pair.inputs) + [eos]
        for side in pb.SIDES:
            features = row[side]
            weights = features["decoder_loss_weights"]
            answer = features["decoder_target_tokens"][weights > 0]
            assert answer[-1] == eos
            assert vocabulary.decode(answer[:-1].tolist()) == getattr(pair, side)
            if model.config.is_encoder_decoder:  # the prompt on the encoder side
                encoder = features["encoder_input_tokens"]
                assert encoder[:len(prompt)].tolist() == prompt and not encoder[len(prompt):].any()
            else:  # the prompt before the answer, weighted 0; only the answer is weighted
                first = int(np.flatnonzero(weights)[0])
                assert features["decoder_target_tokens"][:first].tolist() == prompt
                assert weights[first:first + len(answer)].all() and weights.sum() == len(answer)
        if model.config.is_encoder_decoder:
            np.testing.assert_array_equal(row["chosen"]["encoder_input_tokens"],
                                          row["rejected"]["encoder_input_tokens"])
        else:
            n = len(prompt)
            for name in ("decoder_target_tokens", "decoder_input_tokens",
                         "decoder_loss_weights"):
                np.testing.assert_array_equal(row["chosen"][name][:n], row["rejected"][name][:n])


@pytest.mark.parametrize("model_and_vocabulary", MODELS, indirect=True)
def test_pairs_that_do_not_fit_are_dropped_and_counted_never_cut(model_and_vocabulary):
    model, vocabulary = model_and_vocabulary
    long_answer = " ".join(["three blue whales"] * 20)
    pairs = [PAIRS[0],
             PreferencePair("Tell me a story. " * 20, "Once.", "No."),  # prompt too long
             PreferencePair("Story?", long_answer, "No."),
             PreferencePair("Story?", "No.", long_answer),
             PAIRS[2]]
    made = pb.pair_batches(model, vocabulary, pairs, feature_lengths=LENGTHS, batch_size=4)
    assert made.summary.dropped == {pb.PROMPT_TOO_LONG: 1, pb.CHOSEN_TOO_LONG: 1,
                                    pb.REJECTED_TOO_LONG: 1}
    assert made.pair_indices == ((0, 4),) and made.rows == (2,)
    assert (made.summary.pairs, made.summary.kept, made.summary.padding_rows) == (5, 2, 2)
    assert "dropped, never cut" in made.summary.describe()
    # The boundary: an answer of exactly targets - 1 tokens (+ EOS) fits.
    ids = vocabulary.encode(long_answer)[:LENGTHS["targets"] - 1]
    exact = vocabulary.decode(ids)
    assert len(vocabulary.encode(exact)) == LENGTHS["targets"] - 1
    fits = pb.pair_batches(model, vocabulary, [PreferencePair("Story?", exact, "No.")],
                           feature_lengths=LENGTHS, batch_size=1)
    assert fits.summary.kept == 1 and fits.summary.dropped == {}


@pytest.mark.parametrize("model_and_vocabulary", MODELS, indirect=True)
def test_padding_rows_carry_no_weight(model_and_vocabulary):
    model, vocabulary = model_and_vocabulary
    made = pb.pair_batches(model, vocabulary, PAIRS, feature_lengths=LENGTHS, batch_size=4)
    assert made.rows == (4, 1) and made.summary.padding_rows == 3
    for batch, rows in zip(made.batches, made.rows):
        for side in pb.SIDES:
            padding = pb.padding_rows(batch[side])
            assert padding.tolist() == [False] * rows + [True] * (4 - rows)
            for name, value in batch[side].items():  # otherwise copies of the last real row
                if name != "decoder_loss_weights":
                    assert (value[rows:] == value[rows - 1]).all(), name


@pytest.mark.parametrize("model_and_vocabulary", ["t5-tiny"], indirect=True)
def test_answers_the_vocabulary_cannot_tell_apart_are_dropped(model_and_vocabulary):
    model, vocabulary = model_and_vocabulary  # SentencePiece folds runs of spaces
    pair = PreferencePair("Hi?", "Hello  there.", "Hello there.")
    made = pb.pair_batches(model, vocabulary, [pair], feature_lengths=LENGTHS, batch_size=1)
    assert made.batches == () and made.summary.dropped == {pb.SAME_TOKENS: 1}


def test_feature_lengths_and_batch_size_are_validated():
    model = build_model(get_preset("gpt2-tiny"))
    with pytest.raises(ValueError, match="feature_lengths"):
        pb.pair_batches(model, None, PAIRS, feature_lengths={"inputs": 8}, batch_size=1)
    with pytest.raises(ValueError, match="batch_size"):
        pb.pair_batches(model, None, PAIRS, feature_lengths=LENGTHS, batch_size=0)


@pytest.mark.parametrize("model_and_vocabulary", [*MODELS, "ul2-tiny"], indirect=True)
def test_a_prompt_fits_exactly_at_the_inputs_length_and_not_one_token_over(model_and_vocabulary):
    model, vocabulary = model_and_vocabulary
    pair = PAIRS[1]
    # The prompt's tokens as the model reads them: UL2 reads its mode token first (the UL2
    # paper's "[S2S]" for sequence-to-sequence fine-tuning), then the prompt, then EOS.
    mode = vocabulary.encode("[S2S]") if model.config.family == "ul2" else []
    needed = len(mode) + len(vocabulary.encode(pair.inputs)) + 1
    for length, kept in ((needed, 1), (needed - 1, 0)):
        lengths = {"inputs": length, "targets": LENGTHS["targets"]}
        made = pb.pair_batches(model, vocabulary, [pair], feature_lengths=lengths, batch_size=1)
        assert made.summary.kept == kept, length
        assert made.summary.dropped == ({} if kept else {pb.PROMPT_TOO_LONG: 1})
    if model.config.is_encoder_decoder:
        made = pb.pair_batches(model, vocabulary, [pair], batch_size=1,
                               feature_lengths={"inputs": needed, "targets": 24})
        encoder = made.batches[0]["chosen"]["encoder_input_tokens"][0].tolist()
        assert encoder == mode + vocabulary.encode(pair.inputs) + [vocabulary.eos_id]
