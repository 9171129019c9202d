"""Statistics of pairwise evaluation, checked against published worked examples, simulations with
known truth, and independent implementations (statsmodels, krippendorff: test-only packages)."""

import math

import numpy as np
import pytest

from arch_compare.evaluation import pairwise as pw
from arch_compare.evaluation.pairwise import A, B, BOTH_BAD, TIE, Comparison, Rating

ELO_PER_NAT = 400.0 / math.log(10.0)


# --- verdicts and ratings -------------------------------------------------------------------------

def test_unknown_verdict_names_itself_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'left'.*'A', 'B', 'tie', 'both_bad'"):
        pw.check_verdict("left")
    with pytest.raises(ValueError, match="'both bad'"):
        Rating("i1", "r1", "both bad", "llama", "chatgpt")


def test_rating_validation():
    with pytest.raises(ValueError, match="both sides show model 'llama'"):
        Rating("i1", "r1", A, "llama", "llama")
    with pytest.raises(ValueError, match="verdict word"):
        Rating("i1", "r1", A, "tie", "llama")
    with pytest.raises(ValueError, match="lacks left_model, right_model"):
        Rating.from_mapping({"item_id": "i1", "rater_id": "r1", "verdict": A})


def test_decision_and_score_do_not_depend_on_the_display_order():
    shown_left = Rating("i1", "r1", A, "llama", "chatgpt")
    shown_right = Rating("i1", "r2", B, "chatgpt", "llama")
    assert shown_left.decision == shown_right.decision == "llama"
    assert shown_left.score_for("llama") == shown_right.score_for("llama") == 1.0
    assert shown_right.score_for("chatgpt") == 0.0
    both_bad = Rating("i2", "r1", BOTH_BAD, "chatgpt", "llama")
    assert both_bad.decision == BOTH_BAD and both_bad.score_for("llama") == 0.5
    with pytest.raises(ValueError, match="'t5' is not in item 'i1'"):
        shown_left.score_for("t5")


def test_outcomes_for_counts_both_bad_as_a_tie_and_filters_the_opponent():
    ratings = [Rating("i1", "r1", A, "llama", "chatgpt"),
               {"item_id": "i2", "rater_id": "r1", "verdict": A, "left_model": "chatgpt",
                "right_model": "llama"},
               Rating("i3", "r1", BOTH_BAD, "llama", "chatgpt"),
               Rating("i4", "r1", TIE, "chatgpt", "llama"),
               Rating("i5", "r1", A, "llama", "t5")]
    np.testing.assert_array_equal(pw.outcomes_for(ratings, "llama", "chatgpt"), [1, 0, .5, .5])
    np.testing.assert_array_equal(pw.outcomes_for(ratings, "llama"), [1, 0, .5, .5, 1])
    assert pw.outcomes_for(ratings, "ul2").size == 0


# --- win rate -------------------------------------------------------------------------------------

def test_win_rate_counts_ties_as_half():
    result = pw.win_rate([1, 1, 0.5, 0, 0.5, 1], n_bootstrap=200)
    assert (result.n, result.wins, result.ties, result.losses) == (6, 3, 2, 1)
    assert result.rate == pytest.approx(4 / 6)
    assert result.low <= result.rate <= result.high


def test_win_rate_rejects_other_values_and_empty_input():
    with pytest.raises(ValueError, match="1 \\(win\\), 0.5 \\(tie\\) or 0 \\(loss\\); got 0.7"):
        pw.win_rate([1, 0.7])
    with pytest.raises(ValueError, match="at least one outcome"):
        pw.win_rate([])
    with pytest.raises(ValueError, match="confidence"):
        pw.win_rate([1], confidence=95)


def test_win_rate_interval_matches_the_normal_approximation_on_large_samples():
    rng = np.random.default_rng(3)
    outcomes = rng.choice([1.0, 0.5, 0.0], p=[0.45, 0.25, 0.30], size=4000)
    result = pw.win_rate(outcomes, n_bootstrap=4000, seed=1)
    half_width = 1.959964 * outcomes.std() / math.sqrt(outcomes.size)
    assert result.low == pytest.approx(result.rate - half_width, abs=0.002)
    assert result.high == pytest.approx(result.rate + half_width, abs=0.002)


def test_win_rate_interval_covers_the_truth_at_about_the_nominal_rate():
    # 300 simulated studies of 80 comparisons; the true rate is 0.5 + 0.5 * 0.2 = 0.6.
    rng = np.random.default_rng(0)
    truth, covered, studies = 0.6, 0, 300
    for study in range(studies):
        outcomes = rng.choice([1.0, 0.5, 0.0], p=[0.5, 0.2, 0.3], size=80)
        result = pw.win_rate(outcomes, n_bootstrap=500, seed=study)
        covered += result.low <= truth <= result.high
    # Binomial sd of the coverage over 300 studies is ~0.013 around 0.95.
    assert 0.91 <= covered / studies <= 0.985


# --- Bradley-Terry --------------------------------------------------------------------------------

TRUE_LOG_STRENGTHS = {"gpt2": -1.2, "llama7b": -0.5, "llama13b": 0.0, "t5": 0.5, "chatgpt": 1.0}


def simulate_comparisons(n, seed=0):
    """Random pairs of models; ties are drawn so that the expected score of the first is still
    the Bradley-Terry probability, which is what counting a tie as half a win assumes."""
    rng = np.random.default_rng(seed)
    names = list(TRUE_LOG_STRENGTHS)
    theta = np.array([TRUE_LOG_STRENGTHS[m] for m in names])
    first, second = np.array([rng.choice(5, size=2, replace=False) for _ in range(n)]).T
    p_first = 1.0 / (1.0 + np.exp(theta[second] - theta[first]))  # [n]
    p_tie = 0.6 * np.minimum(p_first, 1.0 - p_first)
    u = rng.random(n)
    score = np.where(u < p_first - p_tie / 2, 1.0, np.where(u < p_first + p_tie / 2, 0.5, 0.0))
    return [Comparison(names[i], names[j], s) for i, j, s in zip(first, second, score)]


def true_elo(anchor=None, base=1000.0):
    elo = {m: ELO_PER_NAT * t for m, t in TRUE_LOG_STRENGTHS.items()}
    shift = elo[anchor] if anchor else np.mean(list(elo.values()))
    return {m: r - shift + base for m, r in elo.items()}


@pytest.fixture(scope="module")
def simulated():
    return simulate_comparisons(20_000)


def test_bradley_terry_recovers_the_generating_strengths(simulated):
    fitted = pw.bradley_terry(simulated)
    assert sum(c.score == 0.5 for c in simulated) > 2000  # the simulation has many ties
    assert np.mean(list(fitted.values())) == pytest.approx(1000.0)
    for model, truth in true_elo().items():
        # A standard error is ~4 Elo points here; 20 points is ~5 of them.
        assert fitted[model] == pytest.approx(truth, abs=20), model


def test_bradley_terry_bootstrap_intervals_cover_the_truth(simulated):
    intervals = pw.bradley_terry_bootstrap(simulated, anchor="llama13b", n_bootstrap=200,
                                           confidence=0.99, seed=1)
    assert intervals["llama13b"] == pw.Interval(1000.0, 1000.0, 1000.0)
    for model, truth in true_elo(anchor="llama13b").items():
        interval = intervals[model]
        assert interval.low <= truth <= interval.high, (model, interval, truth)
        assert interval.high - interval.low < 40  # and they are narrow at this sample size


def test_bradley_terry_matches_logistic_regression_in_statsmodels():
    sm = pytest.importorskip("statsmodels.api")
    comparisons = simulate_comparisons(3000, seed=5)
    names = sorted(TRUE_LOG_STRENGTHS)
    # Design row: +1 for the first model, -1 for the second; "chatgpt" (column 0) is dropped
    # as the reference. A fractional response 0.5 is a tie, as in the half-win likelihood.
    design = np.zeros((len(comparisons), len(names)))
    for row, c in enumerate(comparisons):
        design[row, names.index(c.first)] += 1
        design[row, names.index(c.second)] -= 1
    y = np.array([c.score for c in comparisons])
    coef = sm.GLM(y, design[:, 1:], family=sm.families.Binomial()).fit().params
    fitted = pw.bradley_terry(comparisons, anchor="chatgpt", base=0.0)
    for model, theta in zip(names[1:], coef):
        assert fitted[model] == pytest.approx(ELO_PER_NAT * theta, abs=1e-6)


def test_two_models_have_the_closed_form_elo_gap():
    # 30 wins, 10 losses and 20 ties: scores 40 : 20, so the gap is 400 * log10(2).
    comparisons = [("x", "y", 1.0)] * 30 + [("x", "y", 0.0)] * 10 + [("y", "x", 0.5)] * 20
    fitted = pw.bradley_terry(comparisons, anchor="y", base=1500.0)
    assert fitted["y"] == 1500.0
    assert fitted["x"] - fitted["y"] == pytest.approx(400 * math.log10(2), abs=1e-6)


def test_bradley_terry_accepts_ratings_with_both_bad_as_a_tie():
    ratings = [Rating(f"i{k}", "r1", BOTH_BAD, "x", "y") for k in range(3)]
    ratings += [Rating("j1", "r1", A, "x", "y"), Rating("j2", "r1", A, "y", "x")]
    fitted = pw.bradley_terry(ratings)
    assert fitted["x"] == pytest.approx(fitted["y"])


def test_bradley_terry_says_when_strengths_are_infinite():
    never_wins = [("x", "y", 1.0), ("y", "x", 0.5), ("z", "y", 0.0), ("x", "z", 1.0)]
    with pytest.raises(ValueError, match="not finite: model 'z'"):
        pw.bradley_terry(never_wins)
    fitted = pw.bradley_terry(never_wins, prior=1.0)
    assert fitted["z"] < fitted["y"] < fitted["x"]
    with pytest.raises(ValueError, match="anchor 'w' is not among"):
        pw.bradley_terry(never_wins, anchor="w", prior=1.0)


# --- Cohen's kappa --------------------------------------------------------------------------------

def test_cohen_kappa_textbook_example():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15. p_o = 0.7, p_e = 0.5, kappa = 0.4.
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert pw.cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_kappa_matches_statsmodels_and_skips_missing():
    inter_rater = pytest.importorskip("statsmodels.stats.inter_rater")
    rng = np.random.default_rng(2)
    a = rng.choice(list(pw.VERDICTS), size=200, p=[0.4, 0.3, 0.2, 0.1])
    b = np.where(rng.random(200) < 0.6, a, rng.choice(list(pw.VERDICTS), size=200))
    table = np.array([[np.sum((a == x) & (b == y)) for y in pw.VERDICTS] for x in pw.VERDICTS])
    expected = inter_rater.cohens_kappa(table).kappa
    assert pw.cohen_kappa(list(a), list(b)) == pytest.approx(expected, abs=1e-12)
    assert pw.cohen_kappa(list(a) + [None], list(b) + [A]) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(pw.cohen_kappa([A, A], [A, A]))


# --- Fleiss' kappa --------------------------------------------------------------------------------

# The worked example for Fleiss' kappa (10 subjects, 14 raters, 5 categories) as reproduced in
# standard references (e.g. the Wikipedia article "Fleiss' kappa"): P-bar = 0.378,
# P-bar_e = 0.213, kappa = 0.210.
FLEISS_EXAMPLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_worked_example():
    assert round(pw.fleiss_kappa(FLEISS_EXAMPLE), 3) == 0.210
    # The same data as each subject's list of labels gives the same value.
    labels = "abcde"
    per_item = [[labels[c] for c, n in enumerate(row) for _ in range(n)] for row in FLEISS_EXAMPLE]
    assert pw.fleiss_kappa(per_item) == pytest.approx(pw.fleiss_kappa(FLEISS_EXAMPLE))


def test_fleiss_kappa_matches_statsmodels_on_random_data():
    inter_rater = pytest.importorskip("statsmodels.stats.inter_rater")
    rng = np.random.default_rng(4)
    for _ in range(5):
        counts = rng.multinomial(6, rng.dirichlet(np.ones(4)), size=40)  # [items, categories]
        assert pw.fleiss_kappa(counts) == pytest.approx(inter_rater.fleiss_kappa(counts),
                                                        abs=1e-12)


def test_fleiss_kappa_verdict_lists_and_errors():
    per_item = [[A, A, B], [TIE, TIE, TIE], [A, B, BOTH_BAD]]
    counts, categories = pw.category_counts(per_item)
    assert categories == list(pw.VERDICTS)
    np.testing.assert_array_equal(counts, [[2, 1, 0, 0], [0, 0, 3, 0], [1, 1, 0, 1]])
    assert pw.fleiss_kappa(per_item) == pytest.approx(pw.fleiss_kappa(counts))
    with pytest.raises(ValueError, match="same number .* of raters; got \\[2, 3\\]"):
        pw.fleiss_kappa([[A, A, B], [A, B]])


# --- Krippendorff's alpha -------------------------------------------------------------------------

# Krippendorff, K. (2011). "Computing Krippendorff's Alpha-Reliability", the example with 4
# observers, 12 units and missing values (None). Published: nominal 0.743, ordinal 0.815,
# interval 0.849, ratio 0.797.
_ = None
KRIPPENDORFF_EXAMPLE = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, _, _, _],  # observer A
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, _, 3],  # observer B
    [_, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, _],  # observer C
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, _],  # observer D
]


@pytest.mark.parametrize("level, published", [
    ("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)])
def test_krippendorff_alpha_worked_example(level, published):
    assert round(pw.krippendorff_alpha(KRIPPENDORFF_EXAMPLE, level), 3) == published


def test_krippendorff_alpha_nominal_labels_need_not_be_numbers():
    names = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
    as_text = [[names.get(v) for v in row] for row in KRIPPENDORFF_EXAMPLE]
    assert pw.krippendorff_alpha(as_text) == pw.krippendorff_alpha(KRIPPENDORFF_EXAMPLE)
    with pytest.raises(ValueError, match="interval data must be numbers"):
        pw.krippendorff_alpha(as_text, "interval")
    with pytest.raises(ValueError, match="unknown level 'cardinal'"):
        pw.krippendorff_alpha(KRIPPENDORFF_EXAMPLE, "cardinal")


@pytest.mark.parametrize("level", pw.KRIPPENDORFF_LEVELS)
def test_krippendorff_alpha_matches_the_krippendorff_package(level):
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(6)
    truth = rng.integers(1, 6, size=30)  # [items]
    # [raters, items]: 5 raters who mostly agree with the truth, 25% of values missing.
    data = np.where(rng.random((5, 30)) < 0.7, truth, rng.integers(1, 6, size=(5, 30)))
    data = np.where(rng.random((5, 30)) < 0.25, np.nan, data.astype(float))
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement=level)
    assert pw.krippendorff_alpha(data, level) == pytest.approx(expected, abs=1e-10)


# --- position bias --------------------------------------------------------------------------------

def simulated_ratings(rater, n_items, rng, *, left_preference=0.0, accuracy=0.9, prefix="i"):
    """Ratings of items where "good" beats "bad", with the display order randomised.

    The rater judges correctly with probability `accuracy`; with probability
    `left_preference` they pick the left output whatever it is.
    """
    ratings = []
    for k in range(n_items):
        left, right = ("good", "bad") if rng.random() < 0.5 else ("bad", "good")
        if rng.random() < left_preference:
            verdict = A
        elif rng.random() < accuracy:
            verdict = A if left == "good" else B
        else:
            verdict = rng.choice([A, B, TIE, BOTH_BAD])
        ratings.append(Rating(f"{prefix}{k}", rater, str(verdict), left, right))
    return ratings


def test_position_bias_detects_a_left_preferring_rater():
    rng = np.random.default_rng(7)
    fair = simulated_ratings("fair", 300, rng)
    biased = simulated_ratings("lefty", 300, rng, left_preference=0.4)
    by_rater = pw.position_bias_by_rater(fair + biased)
    assert by_rater["lefty"].low > 0.55 and by_rater["lefty"].p_value < 1e-6
    assert by_rater["fair"].low < 0.5 < by_rater["fair"].high
    assert by_rater["fair"].n_decisive < 300  # ties and both_bad are left out


def test_position_bias_interval_is_the_exact_binomial_one():
    result = pw.position_bias([A] * 7 + [B] * 3 + [TIE] * 5)
    assert (result.left_wins, result.n_decisive, result.left_rate) == (7, 10, 0.7)
    # Clopper-Pearson 95% interval for 7/10 and the two-sided binomial test.
    assert (result.low, result.high) == pytest.approx((0.3475, 0.9333), abs=1e-4)
    assert result.p_value == pytest.approx(2 * sum(math.comb(10, k) for k in range(7, 11)) / 1024)
    with pytest.raises(ValueError, match="no decisive verdicts"):
        pw.position_bias([TIE, BOTH_BAD])


# --- gold items, majorities and raters ------------------------------------------------------------

def test_gold_filtering_drops_a_random_clicking_rater():
    rng = np.random.default_rng(8)
    ratings = []
    for rater in ["r1", "r2", "r3", "r4"]:
        ratings += simulated_ratings(rater, 60, rng, accuracy=0.95)
    ratings += simulated_ratings("clicker", 60, rng, accuracy=0.0)  # verdicts at random
    gold = {f"i{k}": "good" for k in range(20)}  # the first 20 items are gold checks
    accuracy = pw.gold_accuracy(ratings, gold)
    assert {rater: score.n for rater, score in accuracy.items()} == dict.fromkeys(
        ["clicker", "r1", "r2", "r3", "r4"], 20)
    assert pw.failing_raters(ratings, gold, min_accuracy=0.7) == {"clicker"}
    kept, failing = pw.screen_raters(ratings, gold, min_accuracy=0.7)
    assert failing == {"clicker"}
    assert len(kept) == 4 * 40 and not {r.item_id for r in kept} & gold.keys()
    # The clicker also stands out by agreeing rarely with the other raters' majority.
    agreement = pw.rater_agreement(ratings)
    assert agreement["clicker"].accuracy < 0.5 < min(agreement[r].accuracy
                                                     for r in ["r1", "r2", "r3", "r4"])


def test_gold_answers_may_be_several_and_are_checked():
    ratings = [Rating("g1", "r1", TIE, "x", "y"), Rating("g1", "r2", BOTH_BAD, "y", "x"),
               Rating("g1", "r3", A, "x", "y"), Rating("n1", "r3", A, "x", "y")]
    scores = pw.gold_accuracy(ratings, {"g1": {TIE, BOTH_BAD}})
    assert {r: (s.correct, s.n) for r, s in scores.items()} == {
        "r1": (1, 1), "r2": (1, 1), "r3": (0, 1)}
    assert pw.failing_raters(ratings, {"g1": "x"}, min_gold=2) == set()
    assert pw.failing_raters(ratings, {"g1": "x"}, min_gold=2, require_gold=True) == {
        "r1", "r2", "r3"}
    with pytest.raises(ValueError, match="gold answer \\['z'\\] for item 'g1'"):
        pw.gold_accuracy(ratings, {"g1": "z"})


def test_rater_agreement_with_the_others_majority():
    # Item 1: r1, r2 and r3 (who saw the order swapped) say x; r4 says tie.
    # Item 2: r1 says x, r2 says y, r3 says y; r4 did not rate it.
    ratings = [Rating("1", "r1", A, "x", "y"), Rating("1", "r2", A, "x", "y"),
               Rating("1", "r3", B, "y", "x"), Rating("1", "r4", TIE, "x", "y"),
               Rating("2", "r1", A, "x", "y"), Rating("2", "r2", B, "x", "y"),
               Rating("2", "r3", B, "x", "y")]
    agreement = {r: (s.correct, s.n) for r, s in pw.rater_agreement(ratings).items()}
    # On item 2, r2's others are split (x vs y): not counted for r2, nor for r3.
    assert agreement == {"r1": (1, 2), "r2": (1, 1), "r3": (1, 1), "r4": (0, 1)}
    assert pw.majority_decisions(ratings) == {"1": "x", "2": "y"}
