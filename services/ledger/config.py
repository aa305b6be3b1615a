"""Ledger settings, parsed once from the environment.

| variable | meaning | default |
|---|---|---|
| `DATABASE_URL` | PostgreSQL (required) | - |
| `COACH_LEDGER_LISTEN` / `COACH_LEDGER_ADDR` | where to listen | 127.0.0.1:50054 |
| `COACH_LEDGER_PRICES_FILE` | the price book | services/common/data/prices.yaml |
| `COACH_LEDGER_MAX_MESSAGE_BYTES` | largest RecordAnswers batch accepted | 8 MiB |
| `COACH_BASELINE_MODEL` | the baseline policy's strong model (savings report) | gpt-5.5 |
| `COACH_BASELINE_OUTPUT_TOKENS` | output tokens assumed for a canned or fallback answer under the baseline | 60 |
| `COACH_USER_DAILY_BUDGET_USD` | per-user spend per UTC day, decimal dollars | unlimited |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from services.common.errors import ConfigError
from services.common.pricing import DEFAULT_PRICES_FILE, exact_nanos
from services.common.settings import Env, ServerSettings, database_url, server_settings

# A relay batch of ~500 records with their charges is ~100-200 KB: well above
# the suite's 64 KiB default for small requests.
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    database_url: str
    prices_file: Path
    baseline_model: str
    baseline_output_tokens: int
    user_daily_budget_nanos: int | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = Env(environ)
        server = server_settings(env, "ledger")
        max_bytes = env.int("COACH_LEDGER_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES,
                            minimum=64 * 1024)
        server = dataclasses.replace(
            server, max_message_bytes=max(server.max_message_bytes,
                                          max_bytes or DEFAULT_MAX_MESSAGE_BYTES)
        )
        return cls(
            server=server,
            database_url=database_url(env),
            prices_file=Path(env.str("COACH_LEDGER_PRICES_FILE", str(DEFAULT_PRICES_FILE))),
            baseline_model=env.str("COACH_BASELINE_MODEL", "gpt-5.5"),
            baseline_output_tokens=env.int("COACH_BASELINE_OUTPUT_TOKENS", 60, minimum=0) or 0,
            user_daily_budget_nanos=usd_to_nanos(env.optional("COACH_USER_DAILY_BUDGET_USD"),
                                                 "COACH_USER_DAILY_BUDGET_USD"),
        )


def usd_to_nanos(raw: str | None, name: str) -> int | None:
    """"2.50" -> 2_500_000_000; None stays None (unlimited)."""
    if raw is None:
        return None
    text = raw.strip().removeprefix("$")
    try:
        usd = Decimal(text)
    except InvalidOperation:
        raise ConfigError(f"{name}={raw!r} is not an amount in dollars, e.g. 0.50") from None
    if not usd.is_finite() or usd < 0:
        raise ConfigError(f"{name}={raw!r} must be a non-negative amount in dollars")
    nanos = exact_nanos(usd)
    if nanos is None:
        raise ConfigError(f"{name}={raw!r} has more than 9 decimals")
    return nanos
