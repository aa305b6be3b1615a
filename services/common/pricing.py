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
* Cached input tokens are a subset of input tokens (as OpenAI reports them):
  ``input - cached`` are charged at the input price and ``cached`` at the
  cached-input price, never both. Reasoning tokens are a part of output tokens
  and are charged once, as output.
* One rounding per upstream call, on the sum of its three components::

      nanos = (uncached * p_in + cached * p_cached + output * p_out + 500_000) // 1_000_000

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from services.common.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_PRICES_FILE = Path(__file__).parent / "data" / "prices.yaml"

NANOS_PER_USD = 1_000_000_000
TOKENS_PER_UNIT = 1_000_000  # prices are per 1M tokens
_HALF_UNIT = TOKENS_PER_UNIT // 2

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
    effective: dt.date
    retires: dt.date | None = None


@dataclass(frozen=True)
class PriceBook:
    """Validated prices per model, as loaded from ``prices.yaml``."""

    prices: Mapping[str, ModelPrice]
    shut_down: Mapping[str, dt.date] = field(default_factory=dict)
    source: str = ""
    checked: dt.date | None = None
    today: dt.date = field(default_factory=lambda: dt.datetime.now(dt.UTC).date())

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
        prices: dict[str, ModelPrice] = {}
        for name, entry in models.items():
            model = str(name)
            where = f"{origin}: models.{model}"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}: expected input / cached_input / output / effective")
            unknown = set(entry) - {"input", "cached_input", "output", "effective", "retires"}
            if unknown:
                raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
            prices[model] = ModelPrice(
                model=model,
                input_nanos_per_m=_nanos_per_m(entry.get("input"), f"{where}.input"),
                cached_input_nanos_per_m=_nanos_per_m(
                    entry.get("cached_input"), f"{where}.cached_input"
                ),
                output_nanos_per_m=_nanos_per_m(entry.get("output"), f"{where}.output"),
                effective=_required_date(entry.get("effective"), f"{where}.effective"),
                retires=_date(entry.get("retires"), f"{where}.retires", required=False),
            )
            if prices[model].cached_input_nanos_per_m > prices[model].input_nanos_per_m:
                raise ConfigError(f"{where}: cached_input costs more than input; check the entry")
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
            source=str(raw.get("source", "")),
            checked=_date(raw.get("checked"), f"{origin}: checked", required=False),
            today=today or dt.datetime.now(dt.UTC).date(),
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
        self, model: str, input_tokens: int, cached_input_tokens: int, output_tokens: int
    ) -> Cost:
        """What one upstream call cost, in nano-USD, with one half-up rounding.

        ``cached_input_tokens`` is the cached part of ``input_tokens`` (never added
        on top); reasoning tokens are already inside ``output_tokens``. A cached
        count above the input count (a malformed report) is capped at the input
        count. Negative counts raise ValueError.
        """
        if input_tokens < 0 or cached_input_tokens < 0 or output_tokens < 0:
            raise ValueError(
                f"token counts must not be negative: input={input_tokens} "
                f"cached={cached_input_tokens} output={output_tokens}"
            )
        price = self.price_of(model)
        if price is None:
            return Cost(nanos=0, priced=False)
        cached = min(cached_input_tokens, input_tokens)
        uncached = input_tokens - cached
        scaled = (
            uncached * price.input_nanos_per_m
            + cached * price.cached_input_nanos_per_m
            + output_tokens * price.output_nanos_per_m
        )
        return Cost(nanos=(scaled + _HALF_UNIT) // TOKENS_PER_UNIT, priced=True)

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

    def require(self, models: Iterable[str]) -> None:
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
        for model in wanted:
            price = self.price_of(model)
            if price and price.retires and price.retires - self.today <= _RETIRING_SOON:
                log.warning(
                    "configured model retires soon",
                    extra={"model": model, "retires": price.retires.isoformat()},
                )

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


def _nanos_per_m(value: Any, where: str) -> int:
    """USD per 1M tokens (decimal string) -> exact integer nano-USD per 1M tokens."""
    if value is None or isinstance(value, bool):
        raise ConfigError(f"{where}: a price in USD per 1M tokens is required, e.g. \"0.75\"")
    try:
        usd = Decimal(str(value).strip())
    except InvalidOperation:
        raise ConfigError(f"{where}: {value!r} is not a decimal number") from None
    if not usd.is_finite() or usd < 0:
        raise ConfigError(f"{where}: {value!r} must be a non-negative number")
    nanos = usd * NANOS_PER_USD
    if nanos != nanos.to_integral_value():
        raise ConfigError(f"{where}: {value!r} has more than 9 decimals of a dollar")
    return int(nanos)


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
