"""The target price sheet: every row with its source and date, the demo's row marked fictional,
bad rows named by file and line; a collection's dollars against hand-computed numbers; what
answers were billed, counted by the target or estimated from their text."""

from pathlib import Path

import pytest

from arch_compare.budget import targets
from arch_compare.budget.targets import (Spent, TargetPriceError, collection_cost, get_price,
                                         load_prices, spent)
from arch_compare.imitation import collection
from arch_compare.imitation.targets import Prompt, TokenUsage

SHEET = Path(__file__).resolve().parents[2] / "budgets" / "targets.yaml"


def test_every_row_parses_with_its_source_and_date():
    prices = load_prices(SHEET)
    assert {"gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo", "demo-target"} <= set(prices)
    for price in prices.values():
        assert price.source.strip() and price.date.strip()
    assert prices["demo-target"].fictional and "FICTIONAL" in prices["demo-target"].source
    assert not any(p.fictional for name, p in prices.items() if name != "demo-target")
    assert load_prices() == prices  # the default sheet


@pytest.mark.parametrize("row, message", [
    ("  x:\n    input_usd_per_million: 1\n", "targets.x: missing output_usd_per_million"),
    ("  x:\n    input_usd_per_million: 1\n    output_usd_per_million: 2\n"
     "    batch_discount: 1.5\n    source: s\n    date: d\n", "batch_discount must be a fraction"),
    ("  x:\n    input_usd_per_million: -1\n    output_usd_per_million: 2\n"
     "    batch_discount: null\n    source: s\n    date: d\n", "input_usd_per_million must be"),
    ("  x:\n    input_usd_per_million: 1\n    output_usd_per_million: 2\n"
     "    batch_discount: null\n    source: s\n    date: d\n    cost: 3\n", "unknown cost"),
])
def test_a_bad_row_is_named_by_file_and_line(tmp_path, row, message):
    path = tmp_path / "sheet.yaml"
    path.write_text("# a sheet\ntargets:\n" + row)
    with pytest.raises(TargetPriceError, match=message) as raised:
        load_prices(path)
    assert f"{path}:3: targets.x" in str(raised.value)


def test_an_unknown_row_lists_the_known_ones():
    with pytest.raises(TargetPriceError, match="did you mean 'gpt-4o-mini'.*known rows: "):
        get_price("gpt-4o-mni")


def test_collection_cost_by_hand():
    price = get_price("gpt-4o-mini")  # $0.15 in, $0.60 out per million; batch half price
    online = collection_cost(price, 2_000_000, 500_000, batch=False)
    assert online.usd == pytest.approx(2 * 0.15 + 0.5 * 0.60)  # $0.60
    assert online.tokens == 2_500_000 and online.discount == 0
    batch = collection_cost(price, 2_000_000, 500_000, batch=True)
    assert batch.usd == pytest.approx(0.30) and batch.discount == 0.5
    assert "50% off" in batch.describe() and "$0.30" in batch.describe()
    # No verified batch discount: batch is priced in full, and says so.
    unverified = collection_cost(get_price("gpt-3.5-turbo"), 1_000_000, 1_000_000, batch=True)
    assert unverified.usd == pytest.approx(0.50 + 1.50)
    assert "full price" in unverified.describe()
    demo = collection_cost(get_price("demo-target"), 100, 1000, batch=False)
    assert demo.usd == pytest.approx((100 * 1.0 + 1000 * 4.0) / 1e6)
    assert "FICTIONAL" in demo.describe() and "$0.0041" in demo.describe()
    with pytest.raises(ValueError, match="prompt_tokens must be an integer >= 0"):
        collection_cost(price, -1, 0, batch=False)


def test_spent_counts_usage_and_estimates_what_has_none():
    prompt = Prompt.from_text("p1", "x" * 41)  # 41 characters: 11 tokens at 4 per token
    counted = collection.CollectedAnswer("k1", prompt, None, "t", "y" * 9,
                                         usage=TokenUsage(30, 7))
    uncounted = collection.CollectedAnswer("k2", prompt, None, "t", "y" * 9)  # 9 chars: 3
    assert spent([counted]) == Spent(1, 30, 7, 0) and not spent([counted]).tokens_estimated
    both = spent([counted, uncounted])
    assert both == Spent(2, 30 + 11, 7 + 3, 1) and both.tokens_estimated
    assert targets.CHARS_PER_TOKEN == 4.0
    assert spent([]) == targets.NOTHING_SPENT


def test_a_study_grid_checks_its_price_row_and_mode():
    from arch_compare.budget import StudyGrid
    grid = dict(models=("gpt2-small",), data_tokens=(4096,), setups=("a100-80gb",),
                input_length=512, target_length=512)
    answers, cost = StudyGrid(**grid, target_price="gpt-4o", collection_mode="batch").collection()
    assert answers == 4 and cost.usd == pytest.approx((2048 * 2.5 + 2048 * 10.0) / 1e6 / 2)
    assert StudyGrid(**grid).collection() is None
    with pytest.raises(TargetPriceError, match="unknown target price 'gpt-5o'"):
        StudyGrid(**grid, target_price="gpt-5o")
    with pytest.raises(ValueError, match="collection_mode must be 'online' or 'batch'"):
        StudyGrid(**grid, target_price="gpt-4o", collection_mode="later")
