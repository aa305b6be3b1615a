"""The price of a call: services.common.pricing.PriceBook over its data/prices.yaml (no network)."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from services.common.errors import ConfigError
from services.common.pricing import Cost, PriceBook

TODAY = dt.date(2026, 11, 27)


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook.load(today=TODAY)


def _book(models: dict[str, Any], **extra: Any) -> PriceBook:
    return PriceBook.from_mapping({"models": models, **extra}, today=TODAY)


def test_shipped_price_file_lists_current_and_legacy_models(book: PriceBook) -> None:
    assert book.source == "https://developers.openai.com/api/docs/pricing"
    assert book.checked == dt.date(2026, 11, 5)
    expected = {  # USD per 1M tokens: input, cached input, output
        "gpt-5.5": ("5.00", "0.50", "30.00"),
        "gpt-5.4": ("2.50", "0.25", "15.00"),
        "gpt-5.4-mini": ("0.75", "0.075", "4.50"),
        "gpt-5.4-nano": ("0.20", "0.02", "1.25"),
        "gpt-4.1": ("2.00", "0.50", "8.00"),
        "gpt-4.1-mini": ("0.40", "0.10", "1.60"),
        "gpt-4o": ("2.50", "1.25", "10.00"),
        "gpt-4o-mini": ("0.15", "0.075", "0.60"),
        "gpt-5": ("1.25", "0.125", "10.00"),
        "gpt-5-mini": ("0.25", "0.025", "2.00"),
        "gpt-5-nano": ("0.05", "0.005", "0.40"),
        "o3": ("2.00", "0.50", "8.00"),
        "gpt-5.6-sol": ("5.00", "0.50", "30.00"),
        "gpt-5.6-terra": ("2.00", "0.20", "12.00"),
        "gpt-5.6-luna": ("0.20", "0.02", "1.20"),
        "gpt-6-astra": ("10.00", "1.00", "50.00"),
        "gpt-6-sol": ("2.00", "0.20", "10.00"),
        "gpt-6-terra": ("1.00", "0.10", "5.00"),
        "gpt-6-luna": ("0.10", "0.01", "0.50"),
        "gpt-6.1-sol": ("2.00", "0.10", "10.00"),
        "gpt-6.1-terra": ("1.00", "0.05", "5.00"),
    }
    assert set(book.prices) == set(expected)
    for model, (inp, cached, out) in expected.items():
        price = book.prices[model]
        nanos = [int(Decimal(x) * 10**9) for x in (inp, cached, out)]
        assert [price.input_nanos_per_m, price.cached_input_nanos_per_m,
                price.output_nanos_per_m] == nanos, model
    assert book.prices["gpt-4o-mini"].retires == dt.date(2027, 1, 14)
    assert book.prices["gpt-5-mini"].retires == dt.date(2026, 12, 11)
    for shut in ("gpt-4", "gpt-4-turbo", "gpt-4.1-nano"):
        assert shut not in book.prices and book.price_of(shut) is None


def test_one_million_tokens_cost_the_listed_price(book: PriceBook) -> None:
    # $0.75 / $0.075 / $4.50 per 1M tokens
    assert book.cost_usd_nanos("gpt-5.4-mini", 1_000_000, 0, 0) == Cost(750_000_000, True)
    assert book.cost_usd_nanos("gpt-5.4-mini", 1_000_000, 1_000_000, 0).nanos == 75_000_000
    assert book.cost_usd_nanos("gpt-5.4-mini", 0, 0, 1_000_000).nanos == 4_500_000_000


def test_cached_tokens_are_charged_at_the_cached_price_and_not_again_as_input(
    book: PriceBook,
) -> None:
    # 1,000 input of which 400 cached: 600 x $0.75/M + 400 x $0.075/M = $0.00048
    cost = book.cost_usd_nanos("gpt-5.4-mini", 1000, 400, 0)
    assert cost.nanos == 600 * 750 + 400 * 75 == 480_000
    uncached = book.cost_usd_nanos("gpt-5.4-mini", 1000, 0, 0).nanos
    assert cost.nanos < uncached
    # a malformed report with cached > input never charges more than input
    assert book.cost_usd_nanos("gpt-5.4-mini", 100, 500, 0).nanos == 100 * 75


def test_a_typical_answer_is_exact_to_the_nano(book: PriceBook) -> None:
    # gpt-5.5: 3,200 input (2,048 cached) + 180 output
    cost = book.cost_usd_nanos("gpt-5.5", 3200, 2048, 180)
    assert cost.nanos == 1152 * 5_000 + 2048 * 500 + 180 * 30_000 == 12_184_000
    assert cost.priced


def test_reasoning_tokens_are_inside_output_and_charged_once(book: PriceBook) -> None:
    # The function has no reasoning argument on purpose: 300 output tokens of
    # which 250 were reasoning cost exactly 300 output tokens.
    assert book.cost_usd_nanos("gpt-5.4", 0, 0, 300).nanos == 300 * 15_000


def test_sums_of_many_calls_are_exact_integers(book: PriceBook) -> None:
    rng = random.Random(7)
    models = sorted(book.prices)
    total = 0
    exact = Fraction(0)
    for _ in range(20_000):
        model = rng.choice(models)
        inp = rng.randrange(0, 20_000)
        cached = rng.randrange(0, inp + 1)
        out = rng.randrange(0, 2_000)
        cost = book.cost_usd_nanos(model, inp, cached, out)
        assert isinstance(cost.nanos, int)
        total += cost.nanos
        p = book.prices[model]
        exact += Fraction((inp - cached) * p.input_nanos_per_m + cached
                          * p.cached_input_nanos_per_m + out * p.output_nanos_per_m, 1_000_000)
    # today's prices are whole nanos per token: no rounding at all, the sum is exact
    assert exact.denominator == 1
    assert total == exact


def test_sub_nano_prices_round_half_up_once_per_call() -> None:
    # $0.0025 per 1M tokens = 2.5 nano-USD per token
    book = _book({"tiny": {"input": "0.0025", "cached_input": "0.0025", "output": "0.0025",
                           "effective": "2026-11-05"}})
    assert book.cost_usd_nanos("tiny", 1, 0, 0).nanos == 3  # 2.5 -> 3
    assert book.cost_usd_nanos("tiny", 2, 0, 0).nanos == 5
    assert book.cost_usd_nanos("tiny", 1, 0, 1).nanos == 5  # rounded on the call's sum, not 3+3
    assert sum(book.cost_usd_nanos("tiny", 1, 0, 0).nanos for _ in range(1000)) == 3000


def test_dated_snapshot_resolves_to_base_model_price(book: PriceBook) -> None:
    assert book.cost_usd_nanos("gpt-5.4-mini-2026-03-17", 1000, 0, 100) == \
        book.cost_usd_nanos("gpt-5.4-mini", 1000, 0, 100)
    assert book.cost_usd_nanos("gpt-4o-2024-11-20", 10, 0, 0).priced
    assert not book.cost_usd_nanos("gpt-9-2030-01-01", 10, 0, 0).priced
    book.require(["gpt-5.4-mini-2026-03-17"])


def test_listed_snapshot_wins_over_its_base() -> None:
    book = _book({
        "m": {"input": "1", "cached_input": "0.1", "output": "2", "effective": "2026-01-01"},
        "m-2026-01-01": {"input": "3", "cached_input": "0.3", "output": "4",
                         "effective": "2026-01-01"},
    })
    assert book.cost_usd_nanos("m-2026-01-01", 1_000_000, 0, 0).nanos == 3_000_000_000


def test_unknown_model_is_unpriced_not_free(book: PriceBook) -> None:
    cost = book.cost_usd_nanos("gpt-mystery", 1000, 0, 1000)
    assert cost == Cost(nanos=0, priced=False)


def test_negative_tokens_are_refused(book: PriceBook) -> None:
    with pytest.raises(ValueError):
        book.cost_usd_nanos("gpt-5.5", -1, 0, 0)


def test_require_rejects_shut_down_unknown_and_retired_models(book: PriceBook) -> None:
    book.require(["gpt-5.5", "gpt-5.4-mini", "gpt-4o-mini", "gpt-5"])
    with pytest.raises(ConfigError, match=r"gpt-4 was shut down on 2026-10-23"):
        book.require(["gpt-5.5", "gpt-4"])
    with pytest.raises(ConfigError, match=r"gpt-4.1-nano was shut down"):
        book.require(["gpt-4.1-nano"])
    with pytest.raises(ConfigError, match=r"gpt-4-turbo-2024-04-09 was shut down"):
        book.require(["gpt-4-turbo-2024-04-09"])
    with pytest.raises(ConfigError, match=r"gtp-5.4-mini has no price"):
        book.require(["gtp-5.4-mini"])
    later = PriceBook.load(today=dt.date(2026, 12, 11))
    assert later.retired_models() == ["gpt-5", "gpt-5-mini", "gpt-5-nano", "o3"]
    with pytest.raises(ConfigError, match=r"gpt-5-mini retired on 2026-12-11"):
        later.require(["gpt-5.4", "gpt-5-mini"])
    later.require(["gpt-5.4", "gpt-4o-mini"])
    # already recorded calls on a retired model are still priced
    assert later.cost_usd_nanos("gpt-5-mini", 1000, 0, 0).priced


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"input": "0.0000000001", "cached_input": "0", "output": "1"}, "more than 9 decimals"),
        ({"input": "-1", "cached_input": "0", "output": "1"}, "non-negative"),
        ({"input": "abc", "cached_input": "0", "output": "1"}, "not a decimal"),
        ({"cached_input": "0", "output": "1"}, "input: a price"),
        ({"input": "1", "cached_input": "2", "output": "1"}, "cached_input costs more"),
        ({"input": "1", "cached_input": "0.1", "output": "1", "colour": "red"}, "unknown field"),
    ],
)
def test_bad_price_entries_fail_validation(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _book({"m": {"effective": "2026-11-05", **entry}})


def test_missing_as_of_date_and_bad_file_fail_validation(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="as_of: a date"):
        _book({"m": {"input": "1", "cached_input": "0.1", "output": "1"}})
    with pytest.raises(ConfigError, match="currency"):
        _book({"m": {"input": "1", "cached_input": "0.1", "output": "1",
                     "effective": "2026-11-05"}}, currency="EUR")
    bad = tmp_path / "prices.yaml"
    bad.write_text("models: [oops")
    with pytest.raises(ConfigError, match="not valid YAML"):
        PriceBook.load(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        PriceBook.load(tmp_path / "missing.yaml")


# ---- what caching and service tiers really cost (issue 18) -----------------------------------


def test_every_entry_says_where_its_price_comes_from_and_when(book: PriceBook) -> None:
    for model, price in book.prices.items():
        assert price.source, model
        assert price.effective <= dt.date(2026, 12, 7), model
    # a price no one had published is marked as an estimate, never passed off as a list price
    assert book.prices["gpt-6-terra"].source.startswith("estimate, not published when written")


def test_cache_writes_cost_one_and_a_quarter_input_from_the_56_family_on(
    book: PriceBook,
) -> None:
    for model in ("gpt-5.6-sol", "gpt-5.6-terra", "gpt-5.6-luna", "gpt-6-astra", "gpt-6-sol",
                  "gpt-6-terra", "gpt-6-luna", "gpt-6.1-sol", "gpt-6.1-terra"):
        price = book.prices[model]
        assert price.cache_write_nanos_per_m == price.input_nanos_per_m * 5 // 4, model
    # models before 5.6 do not bill writes: they are ordinary input
    assert book.prices["gpt-5.5"].cache_write_nanos_per_m is None
    assert (book.cost_usd_nanos("gpt-5.5", 2000, 0, 0, cache_write_tokens=1500)
            == book.cost_usd_nanos("gpt-5.5", 2000, 0, 0))
    # the 6.1 family caches at 5% of input
    assert book.prices["gpt-6.1-terra"].cached_input_nanos_per_m * 20 == 1_000_000_000


def test_a_call_that_reads_and_writes_the_cache_is_billed_each_part_once(
    book: PriceBook,
) -> None:
    # gpt-5.6-sol: 3,000 input = 1,024 cached + 1,200 written + 776 plain; 200 output
    cost = book.cost_usd_nanos("gpt-5.6-sol", 3000, 1024, 200, cache_write_tokens=1200)
    assert cost.nanos == 776 * 5_000 + 1024 * 500 + 1200 * 6_250 + 200 * 30_000 == 17_892_000
    # a malformed report (cached + written > input) never bills more than the input it had
    capped = book.cost_usd_nanos("gpt-5.6-sol", 1000, 800, 0, cache_write_tokens=900)
    assert capped.nanos == 800 * 500 + 200 * 6_250


@pytest.mark.parametrize(("tier", "factor"), [
    ("", Fraction(1)), ("default", Fraction(1)), ("auto", Fraction(1)),
    ("flex", Fraction(1, 2)), ("batch", Fraction(1, 2)), ("priority", Fraction(2)),
])
def test_the_reported_service_tier_scales_the_whole_call(
    book: PriceBook, tier: str, factor: Fraction
) -> None:
    standard = book.cost_usd_nanos("gpt-5.4-mini", 4000, 2048, 300, cache_write_tokens=0)
    cost = book.cost_usd_nanos("gpt-5.4-mini", 4000, 2048, 300, service_tier=tier)
    assert Fraction(cost.nanos) == standard.nanos * factor


def test_half_a_nano_after_the_tier_discount_rounds_up_once(book: PriceBook) -> None:
    # gpt-5.4-nano flex: 1 cached token = 20 nanos x 0.5 = 10; 1 output = 1,250 x 0.5 = 625;
    # 3 cached tokens of gpt-5-nano (5 nanos each) at flex: 7.5 nanos -> 8
    assert book.cost_usd_nanos("gpt-5.4-nano", 1, 1, 1, service_tier="flex").nanos == 635
    assert book.cost_usd_nanos("gpt-5-nano", 3, 3, 0, service_tier="flex").nanos == 8


def test_an_unknown_tier_is_priced_as_default(book: PriceBook) -> None:
    assert (book.cost_usd_nanos("gpt-5.5", 100, 0, 10, service_tier="scale")
            == book.cost_usd_nanos("gpt-5.5", 100, 0, 10))


def test_cost_of_prices_a_usage_as_reported(book: PriceBook) -> None:
    from services.common.usage import Usage

    usage = Usage(input_tokens=3000, cached_input_tokens=1024, output_tokens=200,
                  cache_write_tokens=1200, service_tier="flex")
    assert book.cost_of("gpt-5.6-sol", usage).nanos == 17_892_000 // 2


def test_families_give_multipliers_and_tiers_come_from_the_file() -> None:
    book = _book(
        {"m": {"family": "f", "input": "2.00", "output": "8.00", "as_of": "2026-12-01",
               "source": "test"}},
        families={"f": {"cached_input": "0.05", "cache_write": "1.25"}},
        service_tiers={"flex": "0.25"},
    )
    price = book.prices["m"]
    assert (price.cached_input_nanos_per_m, price.cache_write_nanos_per_m) == (
        100_000_000, 2_500_000_000)
    assert book.cost_usd_nanos("m", 0, 0, 1000, service_tier="flex").nanos == 2_000_000
    with pytest.raises(ConfigError, match="no family"):
        _book({"m": {"family": "g", "input": "1", "output": "1", "as_of": "2026-12-01"}})
    with pytest.raises(ConfigError, match="cached_input"):
        _book({"m": {"input": "1", "output": "1", "as_of": "2026-12-01"}})


# ---- shutdown dates, with an injected clock -------------------------------------------------


def test_shutdown_dates_are_data() -> None:
    book = PriceBook.load(today=dt.date(2026, 12, 7))
    for model in ("gpt-5", "gpt-5-mini", "gpt-5-nano", "o3"):
        assert book.prices[model].retires == dt.date(2026, 12, 11), model
    assert book.prices["gpt-5.4-nano"].retires == dt.date(2027, 4, 1)


def test_a_model_within_30_days_of_shutdown_is_warned_about_at_start() -> None:
    warnings: list[str] = []
    book = PriceBook.load(today=dt.date(2026, 12, 7))
    book.require(["gpt-5.5", "o3", "gpt-5.4-nano"], warn=warnings.append)
    assert warnings == [
        "configured model o3 shuts down on 2026-12-11 (in 4 days); move to its successor"
    ]
    # gpt-5.4-nano enters the window on 2027-03-02
    assert PriceBook.load(today=dt.date(2027, 3, 1)).retiring_soon(["gpt-5.4-nano"]) == []
    assert PriceBook.load(today=dt.date(2027, 3, 2)).retiring_soon(["gpt-5.4-nano"]) == [
        ("configured model gpt-5.4-nano shuts down on 2027-04-01 (in 30 days); "
         "move to its successor")
    ]


def test_a_model_already_shut_down_is_refused_with_its_date() -> None:
    book = PriceBook.load(today=dt.date(2026, 12, 11))
    with pytest.raises(ConfigError, match=r"gpt-5-mini retired on 2026-12-11"):
        book.require(["gpt-5.4-mini", "gpt-5-mini"])


def test_services_without_prices_still_refuse_shut_down_models() -> None:
    book = PriceBook.load(today=dt.date(2026, 12, 7))
    warnings: list[str] = []
    book.check_shutdowns(["llama3.1:8b", "gpt-5-nano"], warn=warnings.append)  # local: no price
    assert warnings == [
        "configured model gpt-5-nano shuts down on 2026-12-11 (in 4 days); move to its successor"
    ]
    with pytest.raises(ConfigError, match="gpt-4-turbo was shut down on 2026-10-23"):
        book.check_shutdowns(["llama3.1:8b", "gpt-4-turbo"])
    with pytest.raises(ConfigError, match="o3 retired on 2026-12-11"):
        PriceBook.load(today=dt.date(2026, 12, 12)).check_shutdowns(["o3"])
