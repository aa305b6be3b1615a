"""The offline server simulates what a request asks for: cache retention and partitioning,
cache writes where the model bills them, verbosity, replies cut by max_output_tokens (with
a natural length that does not depend on it) and the service tier. No test sleeps: the
server's clock is set."""

from __future__ import annotations

import openai
import pytest

from services.offline_openai import OfflineOpenAI
from services.offline_openai.caching import PromptCache
from services.offline_openai.clock import SimClock

INSTRUCTIONS = " ".join(f"Rule {n}: keep the habit small and specific." for n in range(160))
DAY0 = 1_795_000_000.0
QUESTION = "How do I keep going when motivation drops?"


async def _ask(client: openai.AsyncOpenAI, model: str = "gpt-5.6-sol", **options: object
               ) -> openai.types.responses.Response:
    return await client.responses.create(model=model, instructions=INSTRUCTIONS,
                                         input=QUESTION, **options)  # type: ignore[call-overload, no-any-return]


async def test_24h_retention_survives_a_day_in_memory_does_not_survive_ten_minutes(
    server: OfflineOpenAI, client: openai.AsyncOpenAI
) -> None:
    server.clock.set(DAY0)
    await _ask(client, prompt_cache_key="u-24h", prompt_cache_retention="24h")
    await _ask(client, prompt_cache_key="u-mem", prompt_cache_retention="in_memory")
    server.clock.set(DAY0 + 3 * 3600)  # three idle hours
    kept = await _ask(client, prompt_cache_key="u-24h", prompt_cache_retention="24h")
    lost = await _ask(client, prompt_cache_key="u-mem", prompt_cache_retention="in_memory")
    assert kept.usage is not None and lost.usage is not None
    assert kept.usage.input_tokens_details.cached_tokens >= 1024
    assert lost.usage.input_tokens_details.cached_tokens == 0
    assert kept.prompt_cache_retention == "24h"  # type: ignore[attr-defined]
    server.clock.set(DAY0 + 3 * 3600 + 24 * 3600 + 1)
    gone = await _ask(client, prompt_cache_key="u-24h", prompt_cache_retention="24h")
    assert gone.usage is not None and gone.usage.input_tokens_details.cached_tokens == 0


async def test_prompt_cache_key_partitions_the_cache(
    server: OfflineOpenAI, client: openai.AsyncOpenAI
) -> None:
    server.clock.set(DAY0)
    await _ask(client, prompt_cache_key="user-a")
    other = await _ask(client, prompt_cache_key="user-b")
    same = await _ask(client, prompt_cache_key="user-a")
    assert other.usage is not None and same.usage is not None
    assert other.usage.input_tokens_details.cached_tokens == 0
    assert same.usage.input_tokens_details.cached_tokens >= 1024


async def test_cache_writes_are_reported_only_where_the_model_bills_them(
    server: OfflineOpenAI, client: openai.AsyncOpenAI
) -> None:
    server.clock.set(DAY0)
    first = await _ask(client, prompt_cache_key="w")
    again = await _ask(client, prompt_cache_key="w")
    older = await _ask(client, model="gpt-5.5", prompt_cache_key="w")
    assert first.usage is not None and again.usage is not None and older.usage is not None
    written = first.usage.input_tokens_details.cache_write_tokens  # type: ignore[attr-defined]
    assert written >= 1024 and written % 128 == 0 and written <= first.usage.input_tokens
    assert again.usage.input_tokens_details.cache_write_tokens == 0  # type: ignore[attr-defined]
    assert older.usage.input_tokens_details.cache_write_tokens == 0  # type: ignore[attr-defined]
    chat = await client.chat.completions.create(
        model="gpt-6.1-terra", prompt_cache_key="chat",
        messages=[{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": "hi"}])
    assert chat.usage is not None and chat.usage.prompt_tokens_details is not None
    assert chat.usage.prompt_tokens_details.cache_write_tokens >= 1024  # type: ignore[attr-defined]


async def test_verbosity_shortens_replies(client: openai.AsyncOpenAI) -> None:
    lengths = {}
    for verbosity in ("low", "medium", "high"):
        response = await _ask(client, text={"verbosity": verbosity})
        assert response.usage is not None and response.status == "completed"
        lengths[verbosity] = response.usage.output_tokens
    assert lengths["low"] < lengths["medium"] < lengths["high"]
    assert lengths["low"] <= 40
    default = await _ask(client)  # the API's default is medium
    assert default.usage is not None and default.usage.output_tokens == lengths["medium"]
    chat_low = await client.chat.completions.create(
        model="gpt-5.4-mini", verbosity="low", messages=[{"role": "user", "content": QUESTION}])
    chat_high = await client.chat.completions.create(
        model="gpt-5.4-mini", verbosity="high", messages=[{"role": "user", "content": QUESTION}])
    assert chat_low.usage is not None and chat_high.usage is not None
    assert chat_low.usage.completion_tokens < chat_high.usage.completion_tokens


async def test_max_output_tokens_cuts_a_natural_reply_and_says_so(
    client: openai.AsyncOpenAI,
) -> None:
    natural = await _ask(client, text={"verbosity": "high"})
    roomy = await _ask(client, text={"verbosity": "high"}, max_output_tokens=4000)
    assert natural.usage is not None and roomy.usage is not None
    assert roomy.output_text == natural.output_text  # the limit does not set the length
    cut = await _ask(client, text={"verbosity": "high"}, max_output_tokens=20)
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage is not None and cut.usage.output_tokens == 20
    assert natural.output_text.startswith(cut.output_text.rstrip())
    chat = await client.chat.completions.create(
        model="gpt-5.4-mini", max_completion_tokens=8,
        messages=[{"role": "user", "content": QUESTION}])
    assert chat.choices[0].finish_reason == "length"


@pytest.mark.parametrize(("asked", "reported"), [
    (None, "default"), ("auto", "default"), ("flex", "flex"), ("priority", "priority"),
])
async def test_the_service_tier_is_echoed_as_it_ran(
    client: openai.AsyncOpenAI, asked: str | None, reported: str
) -> None:
    options = {"service_tier": asked} if asked else {}
    response = await _ask(client, **options)
    assert response.service_tier == reported
    chat = await client.chat.completions.create(
        model="gpt-5.4-mini", messages=[{"role": "user", "content": "hi"}], **options)  # type: ignore[call-overload]
    assert chat.service_tier == reported


async def test_bad_lever_values_are_400s(client: openai.AsyncOpenAI) -> None:
    for options in ({"prompt_cache_retention": "1w"}, {"text": {"verbosity": "terse"}},
                    {"service_tier": "cheap"}):
        with pytest.raises(openai.BadRequestError):
            await _ask(client, **options)


def test_unit_writes_are_the_new_part_of_the_longest_prefix() -> None:
    clock = SimClock()
    clock.set(DAY0)
    cache = PromptCache(ttl_seconds=300, clock=clock)
    first = cache.read_and_write("s", list(range(1500)))
    assert (first.cached_tokens, first.written_tokens) == (0, 1408)
    longer = cache.read_and_write("s", list(range(2100)))
    assert (longer.cached_tokens, longer.written_tokens) == (1408, 640)
    short = cache.read_and_write("s", list(range(900)))
    assert (short.cached_tokens, short.written_tokens) == (0, 0)  # under 1,024: never cached


def test_elaborations_do_not_change_what_the_coachs_turn_asks() -> None:
    # The router reads the coach's last turn (an open question keeps a reply on the stateful
    # tier): the offline model's longer replies must not open threads its short ones did not.
    from services.offline_openai import replies
    from services.router.decision import Router

    read = Router.from_files()._classifier.read_coach_turn
    cores = [*replies.STRUGGLE_REPLIES, *replies.WIN_REPLIES, *replies.QUESTION_REPLIES,
             *replies.GREETING_REPLIES, *replies.GENERAL_REPLIES]
    for extra in replies.ELABORATIONS:
        for core in cores:
            assert read(f"{extra} {core}") == read(core), extra
