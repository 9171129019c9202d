import math

import numpy as np
import pytest

from arch_compare.evaluation import metrics


# --- exact match ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an   Apple a day ", "apple day"),
    ("U.S.A.", "usa"),
    ("Theatre of the Absurd", "theatre of absurd"),  # "the" inside a word stays
    ("the-end", "theend"),  # punctuation goes first, so no article is left to remove
    ("A", ""),
    ("Tab\tand\nnewline", "tab and newline"),
])
def test_normalize_answer(text, expected):
    assert metrics.normalize_answer(text) == expected


@pytest.mark.parametrize("generation, answer", [
    (" Ottawa\n\nQ: who wrote hamlet\nA: Shakespeare", "Ottawa"),
    (" Paris Q: what is the next question", "Paris"),
    ("\n  London\nQ: more", "London"),
    ("Jane Austen", "Jane Austen"),
    ("", ""),
])
def test_first_line_answer(generation, answer):
    assert metrics.first_line_answer(generation) == answer


def test_exact_match_accepts_any_alias_and_single_strings():
    targets = [["Albert Einstein", "Einstein"], ["seven", "7"], "the Amazon", ["hydrogen"]]
    predictions = ["einstein", "Seven.", "Amazon", "helium"]
    assert metrics.exact_match(targets, predictions) == {"exact_match": 75.0}


def test_exact_match_is_not_a_substring_match():
    assert metrics.exact_match([["Einstein"]], ["Albert Einstein"])["exact_match"] == 0.0


@pytest.mark.parametrize("targets, predictions, message", [
    ([["a"]], ["a", "b"], "1 targets but 2"),
    ([], [], "no examples"),
    ([[]], ["a"], "target 0"),
    ([["a"], [1]], ["a", "b"], "target 1"),
])
def test_exact_match_rejects_bad_input(targets, predictions, message):
    with pytest.raises(ValueError, match=message):
        metrics.exact_match(targets, predictions)


# --- rank classification --------------------------------------------------------------------------

def test_rank_classification_accuracy_counts_argmax_hits():
    scores = [[-1.0, -0.5, -3.0, -4.0], [-2.0, -2.5, -0.1, -9.0], [-5.0, -1.0], [-0.2, -0.1, -0.3]]
    targets = [1, 0, 1, 1]  # hit, miss, hit (ragged), hit
    assert metrics.rank_classification_accuracy(targets, scores) == {"accuracy": 75.0}


def test_ties_go_to_the_lowest_index():
    scores = [[-1.0, -2.0, -1.0, -1.0]]
    assert metrics.predicted_choice(scores[0]) == 0
    assert metrics.rank_classification_accuracy([0], scores)["accuracy"] == 100.0
    assert metrics.rank_classification_accuracy([2], scores)["accuracy"] == 0.0


def test_negative_infinity_is_a_valid_score():
    assert metrics.rank_classification_accuracy([1], [[-math.inf, -3.0]])["accuracy"] == 100.0


@pytest.mark.parametrize("targets, scores, message", [
    ([0, 1], [[0.0, 1.0]], "2 targets but 1"),
    ([0], [[]], "example 0 needs a non-empty 1-D"),
    ([0], [[[0.0, 1.0]]], r"example 0 needs a non-empty 1-D sequence of per-choice scores, got "
                           r"shape \(1, 2\)"),
    ([1, 4], [[0.0, 1.0], [0.0, 1.0, 2.0, 3.0]], "example 1 has answer index 4 but only 4"),
    ([0, -1], [[0.0, 1.0], [0.0, 1.0]], "example 1 has answer index -1"),
    ([0], [[0.0, math.nan]], "example 0 has a NaN"),
])
def test_rank_classification_rejects_bad_shapes(targets, scores, message):
    with pytest.raises(ValueError, match=message):
        metrics.rank_classification_accuracy(targets, scores)


def test_rank_classification_refuses_float_targets():
    with pytest.raises(TypeError):
        metrics.rank_classification_accuracy([1.0], [[0.0, 1.0]])


def test_subject_accuracy_micro_and_macro_differ_on_unbalanced_subjects():
    targets = [("algebra", 0), ("algebra", 1), ("algebra", 2), ("biology", 0)]
    scores = [[0.0, -1.0, -1.0], [-1.0, 0.0, -1.0], [-1.0, -1.0, 0.0], [-1.0, 0.0]]
    result = metrics.subject_accuracy(targets, scores)
    assert result == {"accuracy_micro": 75.0, "accuracy_macro": 50.0,
                      "accuracy/algebra": 100.0, "accuracy/biology": 0.0}


def test_group_choice_scores_regroups_shuffled_rows():
    rows = [(("q2", 1, True), -0.5), (("q1", 0, False), -2.0), (("q2", 0, False), -1.0),
            (("q1", 2, True), -3.0), (("q1", 1, False), -1.0)]
    answers, grouped = metrics.group_choice_scores([t for t, _ in rows], [s for _, s in rows])
    assert answers == [1, 2]  # q2 first: it appeared first
    assert grouped == [[-1.0, -0.5], [-2.0, -1.0, -3.0]]
    assert metrics.rank_classification_accuracy(answers, grouped)["accuracy"] == 50.0


@pytest.mark.parametrize("targets, message", [
    ([("q", 0, True), ("q", 0, False)], "row 1 repeats choice 0"),
    ([("q", 0, True), ("q", 2, False)], r"choice indices \[0, 2\]"),
    ([("q", 0, True), ("q", 1, True)], "2 correct choices"),
    ([("q", 0, False), ("q", 1, False)], "0 correct choices"),
])
def test_group_choice_scores_rejects_inconsistent_rows(targets, message):
    with pytest.raises(ValueError, match=message):
        metrics.group_choice_scores(targets, [0.0] * len(targets))


# --- list usage -----------------------------------------------------------------------------------

MARKDOWN = "Here are some tips:\n\n- Drink water\n- Sleep well\n  * nested point\n\nGood luck!"
NUMBERED = "Steps:\n1. Preheat the oven.\n2) Mix the flour.\n3. Bake for 20 minutes."
PLAIN = "The capital of France is Paris. It has been the capital since the 10th century."


@pytest.mark.parametrize("text, expected", [
    (MARKDOWN, True),
    (NUMBERED, True),
    ("\u2022 first\n\u2022 second", True),
    (PLAIN, False),
    ("- only one item in otherwise plain text", False),
    ("Some text\n\n* * *\n\n- - -\nMore text", False),  # horizontal rules, not items
    ("**Bold heading**\n*emphasis* here", False),  # no space after the asterisk
    ("2023. It rained.\n1999. It did not.", False),  # four-digit numbers are prose
    ("-\n-\n1.\n", False),  # markers with no text after them
    ("a) first\nb) second", False),  # letters are not list markers here
    ("1. first\n\nSome prose.\n\n- a bullet", True),  # items of different kinds still count
])
def test_uses_list(text, expected):
    assert metrics.uses_list(text) is expected


def test_uses_list_min_items():
    single = "- only one item"
    assert metrics.uses_list(single, min_items=1)
    assert not metrics.uses_list(single, min_items=2)
    assert not metrics.uses_list(MARKDOWN, min_items=4)  # it has exactly three items
    with pytest.raises(ValueError, match="min_items"):
        metrics.uses_list(single, min_items=0)


def test_list_items_returns_the_item_lines():
    assert metrics.list_items(NUMBERED) == ["1. Preheat the oven.", "2) Mix the flour.",
                                            "3. Bake for 20 minutes."]


def test_list_usage_agreement():
    targets = [MARKDOWN, NUMBERED, PLAIN, PLAIN]
    predictions = [NUMBERED, PLAIN, PLAIN, MARKDOWN]
    # lists: targets T T F F, predictions T F F T -> agree on 0 and 2.
    assert metrics.list_usage_agreement(targets, predictions) == {
        "list_agreement": 50.0, "target_list_rate": 50.0, "prediction_list_rate": 50.0,
        "list_when_target_lists": 50.0}


def test_list_rate_given_target_is_nan_when_target_never_lists():
    result = metrics.list_usage_agreement([PLAIN, PLAIN], [MARKDOWN, PLAIN])
    assert math.isnan(result["list_when_target_lists"])
    assert result["list_agreement"] == 50.0


# --- length correlation ---------------------------------------------------------------------------

def _texts(word_counts):
    return [" ".join(["word"] * n) for n in word_counts]


def test_pearson_matches_numpy():
    rng = np.random.default_rng(0)
    target_words, prediction_words = rng.integers(1, 200, size=(2, 30))
    result = metrics.length_correlation(_texts(target_words), _texts(prediction_words))
    assert result["length_pearson"] == pytest.approx(
        np.corrcoef(target_words, prediction_words)[0, 1], abs=1e-12)
    assert result["target_mean_words"] == pytest.approx(target_words.mean())
    assert result["prediction_mean_words"] == pytest.approx(prediction_words.mean())


def test_average_ranks_share_tied_positions():
    np.testing.assert_array_equal(metrics.average_ranks([30, 10, 20, 10, 30, 30]),
                                  [5.0, 1.5, 3.0, 1.5, 5.0, 5.0])


def test_spearman_with_ties_by_hand():
    # Word counts 1,2,2,3 vs 10,30,20,40. Ranks: 1,2.5,2.5,4 vs 1,3,2,4. Deviations from the
    # mean rank 2.5: (-1.5,0,0,1.5) and (-1.5,.5,-.5,1.5): products sum 4.5, squares 4.5 and 5,
    # so rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9).
    result = metrics.length_correlation(_texts([1, 2, 2, 3]), _texts([10, 30, 20, 40]))
    assert result["length_spearman"] == pytest.approx(math.sqrt(0.9), abs=1e-12)


def test_spearman_without_ties_matches_the_rank_difference_formula():
    x, y = [3, 1, 4, 15, 9, 2, 6], [2, 7, 1, 8, 28, 18, 5]
    ranks_x, ranks_y = metrics.average_ranks(x), metrics.average_ranks(y)
    n, d2 = len(x), float(((ranks_x - ranks_y) ** 2).sum())
    assert metrics.spearman(x, y) == pytest.approx(1 - 6 * d2 / (n * (n * n - 1)), abs=1e-12)


def test_monotone_lengths_have_perfect_spearman_but_not_pearson():
    result = metrics.length_correlation(_texts([1, 2, 3, 4, 5]), _texts([1, 4, 9, 16, 100]))
    assert result["length_spearman"] == pytest.approx(1.0)
    assert result["length_pearson"] < 0.95


def test_length_correlation_needs_two_examples():
    with pytest.raises(ValueError, match="at least 2 examples, got 1"):
        metrics.length_correlation(["one two"], ["three"])
    with pytest.raises(ValueError, match="2 targets but 1"):
        metrics.length_correlation(["a", "b"], ["c"])


def test_length_correlation_is_nan_when_one_side_is_constant():
    result = metrics.length_correlation(_texts([2, 2, 2]), _texts([1, 5, 9]))
    assert math.isnan(result["length_pearson"]) and math.isnan(result["length_spearman"])
    assert result["prediction_mean_words"] == 5.0


# --- registry -------------------------------------------------------------------------------------

def test_registered_prediction_metrics_take_seqio_arguments():
    targets, predictions = [MARKDOWN, PLAIN, "short"], [NUMBERED, PLAIN, "a longer answer"]
    for name, fn in metrics.PREDICTION_METRICS.items():
        result = fn(targets=targets, predictions=predictions)
        assert result and all(isinstance(v, float) for v in result.values()), name


def test_registered_score_metrics_take_seqio_arguments():
    examples = {"rank_classification_accuracy": [1, 0],
                "subject_accuracy": [("a", 1), ("b", 0)]}
    assert set(examples) == set(metrics.SCORE_METRICS)
    for name, fn in metrics.SCORE_METRICS.items():
        result = fn(targets=examples[name], scores=[[-1.0, 0.0], [0.0, -1.0]])
        assert all(isinstance(v, float) for v in result.values()), name
        assert max(result.values()) == 100.0, name
