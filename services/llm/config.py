"""Settings of the llm service, parsed once from the environment.

The upstream is any OpenAI-compatible endpoint. ``OPENAI_BASE_URL`` and
``OPENAI_API_KEY`` (the names the openai SDK reads) configure both tiers; each
tier can point elsewhere with its own pair:

- cheap tier (Chat Completions: ``Complete``, ``Summarize``):
  ``COACH_CHEAP_BASE_URL``, ``COACH_CHEAP_API_KEY``
- stateful tier (Responses + Conversations, or Assistants v2: the other RPCs):
  ``COACH_STATEFUL_BASE_URL``, ``COACH_STATEFUL_API_KEY``

Example: the cheap tier on a local Ollama (or vLLM) server, the stateful tier
on OpenAI::

    OPENAI_API_KEY=sk-...                                # stateful tier: api.openai.com
    COACH_CHEAP_BASE_URL=http://127.0.0.1:11434/v1       # Ollama; vLLM: http://127.0.0.1:8000/v1
    COACH_CHEAP_API_KEY=ollama                           # any non-empty string for Ollama/vLLM
    COACH_CHEAP_MODEL=llama3.1:8b                        # used when the router names no model

Ollama and vLLM serve Chat Completions only, so keep the stateful tier on an
endpoint that has the Responses and Conversations APIs (``COACH_STATEFUL_API=
responses``) or the Assistants API (``assistants``).

Other variables (defaults in brackets):

- ``COACH_LLM_LISTEN`` / ``COACH_LLM_ADDR`` [127.0.0.1:50052]
- ``COACH_STATEFUL_API`` [responses]: ``responses`` or ``assistants``; a request's
  ``api`` field overrides it.
- ``COACH_ASSISTANT_ID``: reuse this assistant (Assistants backend) instead of
  finding or creating one; ``COACH_ASSISTANT_NAME`` [coach-suite coach].
- ``COACH_CHEAP_MODEL`` [gpt-5.4-mini], ``COACH_STATEFUL_MODEL`` [gpt-5.5]: used
  when a request names no model; ``COACH_SUMMARY_MAX_TOKENS`` [300].
- ``COACH_LLM_HISTORY_TURNS`` [6]: recent turns the cheap tier sends.
- ``COACH_UPSTREAM_TIMEOUT_SECONDS`` [20]: cap of one upstream HTTP call;
  ``COACH_LLM_BUDGET_SECONDS`` [30]: whole-RPC budget when the caller sets no
  gRPC deadline; ``COACH_DEADLINE_MARGIN_SECONDS`` [0.2]: kept back from the
  caller's deadline to answer in time.
- ``COACH_UPSTREAM_MAX_ATTEMPTS`` [3], ``COACH_RETRY_BASE_SECONDS`` [0.2],
  ``COACH_RETRY_MAX_SECONDS`` [5]: our retry loop (the SDK's own is off).
- ``COACH_BREAKER_FAILURES`` [5], ``COACH_BREAKER_COOLDOWN_SECONDS`` [10]:
  circuit breaker per tier.
- ``COACH_UPSTREAM_MAX_IN_FLIGHT`` [64]: upstream calls in flight per tier; more
  wait their turn (within their deadline) instead of overloading this process.
- ``COACH_UPSTREAM_MAX_CONNECTIONS`` [500], ``COACH_UPSTREAM_KEEPALIVE`` [100]:
  HTTP pool per tier.
- ``COACH_UPSTREAM_HTTP`` [aiohttp]: the SDK's HTTP transport, ``aiohttp`` (the SDK's
  ``DefaultAioHttpClient``, lighter per call) or ``httpx`` (its default).
- ``COACH_CHEAP_HTTP`` [direct]: how the cheap tier posts its Chat Completions request:
  ``direct`` (on aiohttp with the SDK client's URL, headers and error classes, without the
  SDK's per-call pipeline) or ``sdk`` (through that pipeline). See ``upstream.py``; the
  measurements are in docs/decisions.md.
- ``COACH_RUN_POLL_SECONDS`` [0.05] → ``COACH_RUN_POLL_MAX_SECONDS`` [1.0]:
  Assistants run polling, growing by half each poll.
- ``COACH_LLM_PERSONA_FILE``, ``COACH_LLM_TOOLS_FILE``: replace the data files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import ConfigError
from services.common.settings import Env, ServerSettings, server_settings

DATA_DIR = Path(__file__).resolve().parent / "data"
STATEFUL_APIS = ("responses", "assistants")
CHEAP_HTTP = ("direct", "sdk")


@dataclass(frozen=True)
class UpstreamSettings:
    """One tier's endpoint: where it is, its key, its default model, its pool."""

    name: str  # "cheap" or "stateful": also the breaker's label
    base_url: str | None  # None: the SDK's default (api.openai.com)
    api_key: str
    default_model: str
    max_connections: int
    max_keepalive: int
    # "aiohttp" (openai.DefaultAioHttpClient) or "httpx" (openai.DefaultAsyncHttpxClient)
    transport: str = "aiohttp"


@dataclass(frozen=True)
class ResilienceSettings:
    call_timeout_s: float
    budget_s: float
    margin_s: float
    max_attempts: int
    retry_base_s: float
    retry_max_s: float
    breaker_failures: int
    breaker_cooldown_s: float
    max_in_flight: int


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    cheap: UpstreamSettings
    stateful: UpstreamSettings
    stateful_api: str
    assistant_id: str | None
    assistant_name: str
    history_turns: int
    cheap_http: str  # "direct" or "sdk"
    cheap_max_output_tokens: int
    stateful_max_output_tokens: int
    summary_max_tokens: int
    resilience: ResilienceSettings
    run_poll_s: float
    run_poll_max_s: float
    persona_file: Path
    tools_file: Path
    verbosity_file: Path = DATA_DIR / "verbosity.yaml"
    caching_file: Path = DATA_DIR / "caching.yaml"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = Env(environ)
        shared_url = env.optional("OPENAI_BASE_URL")
        shared_key = env.optional("OPENAI_API_KEY")
        max_conn = env.int("COACH_UPSTREAM_MAX_CONNECTIONS", 500, minimum=1) or 500
        keepalive = env.int("COACH_UPSTREAM_KEEPALIVE", 100, minimum=0) or 0
        transport = env.choice("COACH_UPSTREAM_HTTP", "aiohttp", ("aiohttp", "httpx"))

        def tier(name: str, default_model: str) -> UpstreamSettings:
            prefix = f"COACH_{name.upper()}"
            base_url = env.optional(f"{prefix}_BASE_URL") or shared_url
            api_key = env.optional(f"{prefix}_API_KEY") or shared_key
            if not api_key and base_url:
                api_key = "not-needed"  # local servers (Ollama, vLLM) ignore the key
            if not api_key:
                raise ConfigError(
                    f"no API key for the {name} tier: set OPENAI_API_KEY (or {prefix}_API_KEY); "
                    "any non-empty string works for a local OpenAI-compatible server"
                )
            return UpstreamSettings(
                name=name,
                base_url=base_url,
                api_key=api_key,
                default_model=env.str(f"{prefix}_MODEL", default_model),
                max_connections=max_conn,
                max_keepalive=min(keepalive, max_conn),
                transport=transport,
            )

        resilience = ResilienceSettings(
            call_timeout_s=env.float("COACH_UPSTREAM_TIMEOUT_SECONDS", 20.0, minimum=0.1),
            budget_s=env.float("COACH_LLM_BUDGET_SECONDS", 30.0, minimum=0.1),
            margin_s=env.float("COACH_DEADLINE_MARGIN_SECONDS", 0.2),
            max_attempts=env.int("COACH_UPSTREAM_MAX_ATTEMPTS", 3, minimum=1) or 3,
            retry_base_s=env.float("COACH_RETRY_BASE_SECONDS", 0.2),
            retry_max_s=env.float("COACH_RETRY_MAX_SECONDS", 5.0),
            breaker_failures=env.int("COACH_BREAKER_FAILURES", 5, minimum=1) or 5,
            breaker_cooldown_s=env.float("COACH_BREAKER_COOLDOWN_SECONDS", 10.0),
            max_in_flight=env.int("COACH_UPSTREAM_MAX_IN_FLIGHT", 64, minimum=1) or 64,
        )
        return cls(
            server=server_settings(env, "llm"),
            cheap=tier("cheap", "gpt-5.4-mini"),
            stateful=tier("stateful", "gpt-5.5"),
            stateful_api=env.choice("COACH_STATEFUL_API", "responses", STATEFUL_APIS),
            assistant_id=env.optional("COACH_ASSISTANT_ID"),
            assistant_name=env.str("COACH_ASSISTANT_NAME", "coach-suite coach"),
            history_turns=env.int("COACH_LLM_HISTORY_TURNS", 6, minimum=0) or 0,
            cheap_http=env.choice("COACH_CHEAP_HTTP", "direct", CHEAP_HTTP),
            cheap_max_output_tokens=env.int("COACH_CHEAP_MAX_OUTPUT_TOKENS", 150, minimum=1) or 150,
            stateful_max_output_tokens=(
                env.int("COACH_STATEFUL_MAX_OUTPUT_TOKENS", 400, minimum=1) or 400
            ),
            summary_max_tokens=env.int("COACH_SUMMARY_MAX_TOKENS", 300, minimum=16) or 300,
            resilience=resilience,
            run_poll_s=env.float("COACH_RUN_POLL_SECONDS", 0.05, minimum=0.001),
            run_poll_max_s=env.float("COACH_RUN_POLL_MAX_SECONDS", 1.0, minimum=0.001),
            persona_file=Path(env.str("COACH_LLM_PERSONA_FILE", str(DATA_DIR / "persona.yaml"))),
            tools_file=Path(env.str("COACH_LLM_TOOLS_FILE", str(DATA_DIR / "tools.yaml"))),
            verbosity_file=Path(
                env.str("COACH_LLM_VERBOSITY_FILE", str(DATA_DIR / "verbosity.yaml"))),
            caching_file=Path(env.str("COACH_LLM_CACHING_FILE", str(DATA_DIR / "caching.yaml"))),
        )
