"""Exact data amounts: the first N examples, counted in each vocabulary."""

import pytest
import sentencepiece
from tokenizers import Tokenizer

from arch_compare.data.amounts import count_tokens, examples_within_tokens
from arch_compare.data.vocabularies import load_vocabulary
from arch_compare_tasks import catalogue  # noqa: F401
from arch_compare_tasks.registry import records


@pytest.fixture(scope="module")
def examples():
    return list(records("pretraining_text_fixture", "train")) + list(
        records("imitation_sharegpt_fixture", "train"))


def reference_lengths(examples, sentencepiece_model_path, bpe_tokenizer_path):
    """Lengths from the tokenizer libraries directly, not through the seqio vocabularies."""
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model_path))
    bpe = Tokenizer.from_file(str(bpe_tokenizer_path))
    return {
        "sentencepiece": [(len(sp.encode(e["inputs"])), len(sp.encode(e["targets"])))
                          for e in examples],
        "bpe": [(len(bpe.encode(e["inputs"], add_special_tokens=False).ids),
                 len(bpe.encode(e["targets"], add_special_tokens=False).ids)) for e in examples]}


def test_counts_in_each_vocabulary_match_the_tokenizers(examples, sentencepiece_model_path,
                                                        bpe_tokenizer_path):
    vocabularies = {"sentencepiece": load_vocabulary("sentencepiece", sentencepiece_model_path),
                    "bpe": load_vocabulary("hf_tokenizer", bpe_tokenizer_path)}
    counts = count_tokens(examples, vocabularies)
    reference = reference_lengths(examples, sentencepiece_model_path, bpe_tokenizer_path)
    for name, lengths in reference.items():
        assert counts[name].examples == len(examples)
        assert counts[name].inputs == sum(i for i, _ in lengths)
        assert counts[name].targets == sum(t for _, t in lengths)
    assert counts["sentencepiece"].total != counts["bpe"].total  # why both are reported


@pytest.mark.parametrize("budget", [90, 333, 1000, 2500])
def test_token_budget_selects_the_longest_prefix_that_fits(examples, sentencepiece_model_path,
                                                           bpe_tokenizer_path, budget):
    vocabulary = load_vocabulary("hf_tokenizer", bpe_tokenizer_path)
    lengths = reference_lengths(examples, sentencepiece_model_path, bpe_tokenizer_path)["bpe"]
    totals = [i + t for i, t in lengths]
    chosen = examples_within_tokens(examples, vocabulary, budget)
    n = chosen.examples
    assert sum(totals[:n]) == chosen.total <= budget
    assert n == len(examples) or sum(totals[:n + 1]) > budget
    targets_only = examples_within_tokens(examples, vocabulary, budget, feature="targets")
    assert targets_only.targets == sum(t for _, t in lengths[:targets_only.examples]) <= budget


def test_a_budget_below_the_first_example_is_an_error(examples, bpe_tokenizer_path):
    vocabulary = load_vocabulary("hf_tokenizer", bpe_tokenizer_path)
    with pytest.raises(ValueError, match="holds no example"):
        examples_within_tokens(examples, vocabulary, 1)
