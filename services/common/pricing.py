"""The price of an upstream call: one pure function over a validated price book.

Shared by the services that need a cost, with the price file beside it
(``data/prices.yaml``): the router, which returns ``cost_usd_nanos`` with each reply
(even while the ledger is down), and the ledger, which owns the bill (it recomputes,
stores and reports every cost). So the same tokens cost the same nanos everywhere,
and no service reads another service's files.

Arithmetic (integer only, no floats anywhere):

* ``prices.yaml`` holds USD per 1M tokens as decimal strings; at load each is
  converted with ``decimal.Decimal`` to an exact integer number of
  **nano-USD per 1M tokens** (``"0.075"`` -> 75_000_000, i.e. 75 nano-USD per
  token). A price with more than 9 decimals cannot be represented exactly and
  is rejected at load.
* Cached input tokens and cache-write tokens are subsets of input tokens (as
  OpenAI reports them): ``input - cached - written`` are charged at the input
  price, ``cached`` at the cached-input price and ``written`` at the model's
  cache-write price (1.25x input from the gpt-5.6 family on; a model without one
  bills its cache writes as ordinary input), never twice. Reasoning tokens are
  a part of output tokens and are charged once, as output.
* The service tier the upstream REPORTED (not the one requested) scales the
  whole call: ``service_tiers`` in the file maps a tier to an exact decimal
  multiplier (flex and batch 0.5, priority 2). No tier reported means default.
* One rounding per upstream call, on the sum of its components::

      scaled = uncached * p_in + cached * p_cached + written * p_write + output * p_out
      nanos  = round_half_up(scaled * tier_num / (tier_den * 1_000_000))

  i.e. round half up to a whole nano-USD. With today's prices every component
  is already a whole number of nanos per token, so nothing is rounded at all;
  the rule only matters for a future price finer than 1 nano-USD per token.
  Reports add these per-call integers, so a day's total is exact (the sum of
  what each call cost) and does not depend on how the calls are grouped.

A model with no price costs 0 with ``priced=False``: callers record it and
flag it (the ledger stores ``unpriced``, logs a warning and counts
``coach_unpriced_calls_total``); it is never silently free.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from services.common.errors import ConfigError
from services.common.usage import Usage

log = logging.getLogger(__name__)

DEFAULT_PRICES_FILE = Path(__file__).parent / "data" / "prices.yaml"

NANOS_PER_USD = 1_000_000_000
TOKENS_PER_UNIT = 1_000_000  # prices are per 1M tokens

# "gpt-5.4-mini-2026-03-17" -> "gpt-5.4-mini"
_SNAPSHOT = re.compile(r"^(?P<base>.+?)-(?P<date>\d{4}-\d{2}-\d{2})$")
_RETIRING_SOON = dt.timedelta(days=30)


@dataclass(frozen=True)
class Cost:
    """The cost of one upstream call in nano-USD (USD x 10^9)."""

    nanos: int
    priced: bool


@dataclass(frozen=True)
class ModelPrice:
    """Integer nano-USD per 1M tokens for one model."""

    model: str
    input_nanos_per_m: int
    cached_input_nanos_per_m: int
    output_nanos_per_m: int
    effective: dt.date  # the day the price was checked (`as_of`, or `effective`)
    retires: dt.date | None = None
    # Price of input tokens written to the prompt cache; None: billed as input.
    cache_write_nanos_per_m: int | None = None
    source: str = ""
    family: str = ""


# The tier a response reports when it reports none, and how the price file names it.
DEFAULT_SERVICE_TIER = "default"
_DEFAULT_TIERS = {"default": Fraction(1), "auto": Fraction(1)}
_MODEL_FIELDS = {"input", "cached_input", "cache_write", "output", "effective", "as_of",
                 "retires", "source", "family"}
_FAMILY_FIELDS = {"cached_input", "cache_write", "retires"}


@dataclass(frozen=True)
class PriceBook:
    """Validated prices per model, as loaded from ``prices.yaml``."""

    prices: Mapping[str, ModelPrice]
    shut_down: Mapping[str, dt.date] = field(default_factory=dict)
    source: str = ""
    checked: dt.date | None = None
    today: dt.date = field(default_factory=lambda: dt.datetime.now(dt.UTC).date())
    service_tiers: Mapping[str, Fraction] = field(default_factory=lambda: dict(_DEFAULT_TIERS))

    # ---- loading ---------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str | None = None, *, today: dt.date | None = None) -> PriceBook:
        """Reads and validates a price file (default: the one beside this module).

        Raises ConfigError naming the file and the bad entry.
        """
        path = Path(path) if path is not None else DEFAULT_PRICES_FILE
        try:
            raw = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read price file {path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"price file {path} is not valid YAML: {exc}") from None
        book = cls.from_mapping(raw, origin=str(path), today=today)
        book.log_retirements()
        return book

    @classmethod
    def from_mapping(
        cls, raw: Any, *, origin: str = "prices", today: dt.date | None = None
    ) -> PriceBook:
        if not isinstance(raw, dict):
            raise ConfigError(f"{origin}: expected a mapping at the top level")
        if raw.get("currency", "USD") != "USD":
            raise ConfigError(f"{origin}: currency must be USD, not {raw.get('currency')!r}")
        if raw.get("unit", "per_1m_tokens") != "per_1m_tokens":
            raise ConfigError(f"{origin}: unit must be per_1m_tokens, not {raw.get('unit')!r}")
        models = raw.get("models")
        if not isinstance(models, dict) or not models:
            raise ConfigError(f"{origin}: `models` must be a non-empty mapping of model -> prices")
        families = _families(raw.get("families"), origin)
        file_source = str(raw.get("source", ""))
        prices: dict[str, ModelPrice] = {}
        for name, entry in models.items():
            model = str(name)
            prices[model] = _model_price(model, entry, families, file_source, origin)
        shut_down_raw = raw.get("shut_down") or {}
        if not isinstance(shut_down_raw, dict):
            raise ConfigError(f"{origin}: `shut_down` must be a mapping of model -> date")
        shut_down: dict[str, dt.date] = {}
        for name, when in shut_down_raw.items():
            model = str(name)
            if model in prices:
                raise ConfigError(f"{origin}: {model} is both priced and listed as shut down")
            shut_down[model] = _required_date(when, f"{origin}: shut_down.{model}")
        return cls(
            prices=prices,
            shut_down=shut_down,
            source=file_source,
            checked=_date(raw.get("checked"), f"{origin}: checked", required=False),
            today=today or dt.datetime.now(dt.UTC).date(),
            service_tiers=_service_tiers(raw.get("service_tiers"), origin),
        )

    # ---- the price of a call -----------------------------------------------------

    def price_of(self, model: str) -> ModelPrice | None:
        """The model's price; a dated snapshot falls back to its base model's price."""
        price = self.prices.get(model)
        if price is not None:
            return price
        match = _SNAPSHOT.match(model)
        if match:
            return self.prices.get(match.group("base"))
        return None

    def cost_usd_nanos(
        self,
        model: str,
        input_tokens: int,
        cached_input_tokens: int,
        output_tokens: int,
        *,
        cache_write_tokens: int = 0,
        service_tier: str = "",
    ) -> Cost:
        """What one upstream call cost, in nano-USD, with one half-up rounding.

        ``cached_input_tokens`` and ``cache_write_tokens`` are parts of
        ``input_tokens`` (never added on top); reasoning tokens are already inside
        ``output_tokens``. Counts above the input count (a malformed report) are
        capped at it, cached ones first. ``service_tier`` is the tier the response
        reported; an unknown one is priced as default and logged. Negative counts
        raise ValueError.
        """
        if min(input_tokens, cached_input_tokens, output_tokens, cache_write_tokens) < 0:
            raise ValueError(
                f"token counts must not be negative: input={input_tokens} "
                f"cached={cached_input_tokens} cache_write={cache_write_tokens} "
                f"output={output_tokens}"
            )
        price = self.price_of(model)
        if price is None:
            return Cost(nanos=0, priced=False)
        cached = min(cached_input_tokens, input_tokens)
        written = min(cache_write_tokens, input_tokens - cached)
        uncached = input_tokens - cached - written
        write_price = price.cache_write_nanos_per_m
        if write_price is None:
            write_price = price.input_nanos_per_m
        scaled = (
            uncached * price.input_nanos_per_m
            + cached * price.cached_input_nanos_per_m
            + written * write_price
            + output_tokens * price.output_nanos_per_m
        )
        tier = self.tier_multiplier(service_tier)
        numerator = scaled * tier.numerator
        denominator = TOKENS_PER_UNIT * tier.denominator
        return Cost(nanos=(2 * numerator + denominator) // (2 * denominator), priced=True)

    def cost_of(self, model: str, usage: Usage) -> Cost:
        """What one upstream call cost, from its usage exactly as the upstream reported it."""
        return self.cost_usd_nanos(
            model, usage.input_tokens, usage.cached_input_tokens, usage.output_tokens,
            cache_write_tokens=usage.cache_write_tokens, service_tier=usage.service_tier,
        )

    def tier_multiplier(self, service_tier: str) -> Fraction:
        """The price multiplier of a reported service tier (default 1)."""
        tier = (service_tier or DEFAULT_SERVICE_TIER).strip().lower()
        multiplier = self.service_tiers.get(tier)
        if multiplier is None:
            log.warning("unknown service tier priced as default", extra={"service_tier": tier})
            return Fraction(1)
        return multiplier

    # ---- validation of configured models -----------------------------------------

    def problem_with(self, model: str) -> str | None:
        """Why ``model`` cannot be configured today, or None when it can."""
        if not model:
            return "an empty model name"
        base = model
        match = _SNAPSHOT.match(model)
        if model not in self.prices and match:
            base = match.group("base")
        if model in self.shut_down or base in self.shut_down:
            day = self.shut_down.get(model) or self.shut_down[base]
            return f"{model} was shut down on {day.isoformat()} and has no price"
        price = self.price_of(model)
        if price is None:
            return f"{model} has no price in the price book"
        if price.retires is not None and price.retires <= self.today:
            return f"{model} retired on {price.retires.isoformat()}"
        return None

    def require(
        self, models: Iterable[str], *, warn: Callable[[str], None] | None = None
    ) -> None:
        """Raises ConfigError naming every configured model that is unpriced or retired.

        The router and the llm service call this at start with the models their
        configuration names, so a typo or a shut-down model stops start-up
        instead of producing unpriced answers.
        """
        wanted = sorted(set(models))
        problems = [p for p in (self.problem_with(m) for m in wanted) if p]
        if problems:
            raise ConfigError(
                "configured model(s) cannot be used: " + "; ".join(problems)
                + " (see services/common/data/prices.yaml)"
            )
        for warning in self.retiring_soon(wanted):
            if warn is not None:
                warn(warning)
            log.warning("configured model shuts down within 30 days",
                        extra={"detail": warning})

    def check_shutdowns(
        self, models: Iterable[str], *, warn: Callable[[str], None] | None = None
    ) -> None:
        """Like ``require`` but for services whose models need no price here (the llm's
        defaults may name a local model): refuses only a model already shut down, and
        warns about one within 30 days of its shutdown."""
        wanted = sorted({m for m in models if m})
        gone = [p for p in (self.problem_with(m) for m in wanted)
                if p and ("shut down" in p or "retired" in p)]
        if gone:
            raise ConfigError(
                "configured model(s) cannot be used: " + "; ".join(gone)
                + " (see services/common/data/prices.yaml)"
            )
        for warning in self.retiring_soon(wanted):
            if warn is not None:
                warn(warning)
            log.warning("configured model shuts down within 30 days",
                        extra={"detail": warning})

    def retiring_soon(self, models: Iterable[str]) -> list[str]:
        """A warning per model that shuts down within 30 days of ``today``."""
        warnings = []
        for model in sorted(set(models)):
            price = self.price_of(model)
            if price and price.retires and price.retires - self.today <= _RETIRING_SOON:
                days = (price.retires - self.today).days
                warnings.append(
                    f"configured model {model} shuts down on {price.retires.isoformat()} "
                    f"(in {days} day{'s' if days != 1 else ''}); move to its successor"
                )
        return warnings

    def retired_models(self) -> list[str]:
        """Priced models whose retirement date has passed (flagged at load)."""
        return sorted(
            m for m, p in self.prices.items() if p.retires is not None and p.retires <= self.today
        )

    def log_retirements(self) -> None:
        for model in self.retired_models():
            log.warning(
                "price entry is for a retired model; configurations naming it are rejected",
                extra={"model": model, "retires": self.prices[model].retires},
            )


def _model_price(
    model: str, entry: Any, families: Mapping[str, dict[str, Any]], file_source: str,
    origin: str,
) -> ModelPrice:
    where = f"{origin}: models.{model}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected input / cached_input / output / as_of / source")
    unknown = set(entry) - _MODEL_FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    family_name = str(entry.get("family", ""))
    family: dict[str, Any] = {}
    if family_name:
        if family_name not in families:
            raise ConfigError(f"{where}.family: no family {family_name!r} under `families`")
        family = families[family_name]
    input_price = _nanos_per_m(entry.get("input"), f"{where}.input")
    cached = _price_or_multiple(entry, family, "cached_input", input_price, where)
    if cached is None:
        raise ConfigError(f"{where}.cached_input: a price is required (or a family multiplier)")
    write = _price_or_multiple(entry, family, "cache_write", input_price, where)
    day = entry.get("as_of", entry.get("effective"))
    price = ModelPrice(
        model=model,
        input_nanos_per_m=input_price,
        cached_input_nanos_per_m=cached,
        output_nanos_per_m=_nanos_per_m(entry.get("output"), f"{where}.output"),
        effective=_required_date(day, f"{where}.as_of"),
        retires=_date(entry.get("retires", family.get("retires")), f"{where}.retires",
                      required=False),
        cache_write_nanos_per_m=write,
        source=str(entry.get("source", file_source)),
        family=family_name,
    )
    if price.cached_input_nanos_per_m > price.input_nanos_per_m:
        raise ConfigError(f"{where}: cached_input costs more than input; check the entry")
    return price


def _price_or_multiple(
    entry: Mapping[str, Any], family: Mapping[str, Any], key: str, input_price: int, where: str
) -> int | None:
    """An explicit USD price in the entry, else the family's multiple of the input price."""
    if entry.get(key) is not None:
        return _nanos_per_m(entry[key], f"{where}.{key}")
    if family.get(key) is None:
        return None
    nanos = Decimal(input_price) * family[key]
    if nanos != nanos.to_integral_value():
        raise ConfigError(f"{where}.{key}: the family multiplier gives a fraction of a nano-USD")
    return int(nanos)


def _families(raw: Any, origin: str) -> dict[str, dict[str, Any]]:
    """`families`: per family, `cached_input` / `cache_write` as multiples of input."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: `families` must be a mapping of family -> multipliers")
    families: dict[str, dict[str, Any]] = {}
    for name, entry in raw.items():
        where = f"{origin}: families.{name}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected cached_input / cache_write multipliers")
        unknown = set(entry) - _FAMILY_FIELDS
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        family: dict[str, Any] = {}
        for key in ("cached_input", "cache_write"):
            if entry.get(key) is not None:
                family[key] = _multiplier(entry[key], f"{where}.{key}")
        if entry.get("retires") is not None:
            family["retires"] = entry["retires"]
        families[str(name)] = family
    return families


def _service_tiers(raw: Any, origin: str) -> dict[str, Fraction]:
    """`service_tiers`: the price multiplier of each tier a response can report."""
    tiers = dict(_DEFAULT_TIERS)
    if raw is None:
        return tiers
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: `service_tiers` must be a mapping of tier -> multiplier")
    for name, value in raw.items():
        tiers[str(name).lower()] = Fraction(_multiplier(value, f"{origin}: service_tiers.{name}"))
    return tiers


def _multiplier(value: Any, where: str) -> Decimal:
    return _non_negative_decimal(value, where, "a multiplier is required, as a decimal string, "
                                 "e.g. \"0.5\"")


def _nanos_per_m(value: Any, where: str) -> int:
    """USD per 1M tokens (decimal string) -> exact integer nano-USD per 1M tokens."""
    usd = _non_negative_decimal(value, where, "a price in USD per 1M tokens is required, "
                                "e.g. \"0.75\"")
    nanos = exact_nanos(usd)
    if nanos is None:
        raise ConfigError(f"{where}: {value!r} has more than 9 decimals of a dollar")
    return nanos


def _non_negative_decimal(value: Any, where: str, required: str) -> Decimal:
    if value is None or isinstance(value, bool):
        raise ConfigError(f"{where}: {required}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ConfigError(f"{where}: {value!r} is not a decimal number") from None
    if not number.is_finite() or number < 0:
        raise ConfigError(f"{where}: {value!r} must be a non-negative number")
    return number


def exact_nanos(usd: Decimal) -> int | None:
    """Dollars as whole nano-dollars, or None when they have more than 9 decimals."""
    nanos = usd * NANOS_PER_USD
    return int(nanos) if nanos == nanos.to_integral_value() else None


def _required_date(value: Any, where: str) -> dt.date:
    day = _date(value, where, required=True)
    assert day is not None
    return day


def _date(value: Any, where: str, *, required: bool) -> dt.date | None:
    if value is None or value == "":
        if required:
            raise ConfigError(f"{where}: a date YYYY-MM-DD is required")
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise ConfigError(f"{where}: {value!r} is not a date YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not a valid date") from None
