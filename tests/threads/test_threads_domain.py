"""Unit tests of the threads domain code: no network, no database."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import ConfigError, InvalidArgument
from services.common.tokens import count_tokens
from services.threads.baseline_tokens import exchange_tokens
from services.threads.paging import decode_page_token, encode_page_token, page_size
from services.threads.pruning import (
    PruneSettings,
    plan_continuity,
    plan_rotation,
    summary_batches,
)
from services.threads.records import Conversation, HistoryMessage, ToolCall
from services.threads.stateful_turn import goals_from_tool_calls
from services.threads.user_locks import UserLocks

SETTINGS = PruneSettings(keep_messages=20, prune_at_messages=40)


def conversation(held: int = 0, api: str = "responses") -> Conversation:
    return Conversation(id=1, user_id="u", provider_conversation_id="c", api=api, status="active",
                        summary="", summarized_through=0, seen_through=0, seed_turns=held // 2,
                        turns_in_window=held - held // 2, generation=1)


def messages(first: int, count: int) -> list[HistoryMessage]:
    return [HistoryMessage(i, "user" if i % 2 else "coach", f"m{i}")
            for i in range(first, first + count)]


def test_first_turn_creates_a_conversation() -> None:
    plan = plan_continuity(None, [], api="responses", settings=SETTINGS, baseline=False)
    assert plan.rotate and plan.reason == "first_conversation"


def test_unseen_messages_are_appended_while_the_window_has_room() -> None:
    unseen = messages(10, 4)
    plan = plan_continuity(conversation(30), unseen, api="responses", settings=SETTINGS,
                           baseline=False)
    assert not plan.rotate and plan.append == tuple(unseen)


@pytest.mark.parametrize(("held", "unseen", "reason"), [
    (36, 4, "window_full"),  # 36 + 4 + 2 > 40
    (0, 21, "unseen_beyond_window"),
])
def test_rotation_when_the_window_would_overflow(held: int, unseen: int, reason: str) -> None:
    plan = plan_continuity(conversation(held), messages(1, unseen), api="responses",
                           settings=SETTINGS, baseline=False)
    assert plan.rotate and plan.reason == reason


def test_switching_api_rotates_but_baseline_never_does() -> None:
    assert plan_continuity(conversation(2, api="assistants"), [], api="responses",
                           settings=SETTINGS, baseline=False).reason == "api_changed"
    plan = plan_continuity(conversation(400), messages(1, 50), api="responses",
                           settings=SETTINGS, baseline=True)
    assert not plan.rotate and len(plan.append) == 50


def test_rotation_summarizes_only_what_falls_out_of_the_window() -> None:
    plan = plan_rotation(messages(31, 20), summarized_through=10)
    assert (plan.summarize_after, plan.summarize_through) == (10, 30) and plan.needs_summary
    short = plan_rotation(messages(1, 5), summarized_through=0)
    assert not short.needs_summary and len(short.seed) == 5
    baseline = plan_rotation(messages(1, 100), summarized_through=0, baseline=True)
    assert not baseline.needs_summary and len(baseline.seed) == 100
    assert [len(b) for b in summary_batches(messages(1, 450), 200)] == [200, 200, 50]


def test_prune_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        PruneSettings(keep_messages=20, prune_at_messages=21)


def test_page_tokens_are_opaque_and_bound_to_the_user() -> None:
    token = encode_page_token("alice", 1234)
    assert "1234" not in token and decode_page_token("alice", token) == 1234
    assert decode_page_token("alice", "") is None
    for user, bad in (("bob", token), ("alice", "garbage!"), ("alice", "djE6eDox")):
        with pytest.raises(InvalidArgument):
            decode_page_token(user, bad)
    assert (page_size(0), page_size(7), page_size(10_000)) == (50, 7, 500)
    with pytest.raises(InvalidArgument):
        page_size(-1)


def test_goals_come_from_save_goal_calls_only() -> None:
    calls = (
        ToolCall("save_goal", '{"goal": "run a 10k", "deadline": "June"}'),
        ToolCall("log_commitment", '{"commitment": "gym 6am", "due": "tomorrow"}'),
        ToolCall("save_goal", "not json"),
    )
    goals = goals_from_tool_calls(calls)
    assert [(g.goal, g.deadline) for g in goals] == [("run a 10k", "June")]


def test_token_counts() -> None:
    assert count_tokens("") == 0 and count_tokens("hello world") == 2
    message, added = exchange_tokens("hello world", ["hi", "there"])
    assert message == 2 and added == 2 + count_tokens("hi") + count_tokens("there")


async def test_user_locks_serialize_one_user_and_forget_idle_ones() -> None:
    locks = UserLocks()
    running: dict[str, int] = {"a": 0, "b": 0}
    peak: dict[str, int] = {"a": 0, "b": 0}
    # Each holder waits for a second one: with the locks right, that is always the other
    # user's (different users run at once); a second turn of the same user would show in peak.
    pair = asyncio.Barrier(2)

    async def turn(user: str) -> None:
        async with locks.hold(user):
            running[user] += 1
            peak[user] = max(peak[user], running[user])
            await asyncio.wait_for(pair.wait(), 10)
            running[user] -= 1

    await asyncio.gather(*(turn("ab"[i % 2]) for i in range(20)))
    assert peak == {"a": 1, "b": 1} and len(locks) == 0


def test_default_window_keeps_twenty_messages_and_rotates_at_twenty_four() -> None:
    from services.threads.config import Settings

    prune = Settings.from_env({"DATABASE_URL": "postgresql://x/y"}).prune
    assert (prune.keep_messages, prune.prune_at_messages) == (20, 24)
    assert (PruneSettings().keep_messages, PruneSettings().prune_at_messages) == (20, 24)


# ---- cache-aware rotation (issue 18) ----------------------------------------------------------

CACHE_AWARE = PruneSettings(keep_messages=20, prune_at_messages=24,
                            cache_cold_after_s=24 * 3600, ceiling_messages=60)


def test_a_full_window_is_kept_while_the_users_cache_is_warm() -> None:
    # 22 held + 1 unseen + this turn's 2 > 24, but the prefix was used an hour ago: rotating
    # would re-read the whole seed at full price; appending reads it at the cached price.
    plan = plan_continuity(conversation(22), messages(30, 1), api="responses",
                           settings=CACHE_AWARE, baseline=False, idle_s=3600)
    assert not plan.rotate and len(plan.append) == 1


def test_the_first_message_after_the_retention_window_rotates() -> None:
    plan = plan_continuity(conversation(30), [], api="responses", settings=CACHE_AWARE,
                           baseline=False, idle_s=24 * 3600 + 1)
    assert plan.rotate and plan.reason == "window_full_cache_cold"
    # not before the window is full, however cold: a short conversation is cheap to re-read
    assert not plan_continuity(conversation(10), [], api="responses", settings=CACHE_AWARE,
                               baseline=False, idle_s=10 * 24 * 3600).rotate
    # unknown idle time reads as cold
    assert plan_continuity(conversation(30), [], api="responses", settings=CACHE_AWARE,
                           baseline=False).rotate


def test_the_hard_ceiling_rotates_a_warm_conversation() -> None:
    plan = plan_continuity(conversation(58), messages(90, 1), api="responses",
                           settings=CACHE_AWARE, baseline=False, idle_s=30)
    assert plan.rotate and plan.reason == "ceiling"  # 58 + 1 + 2 > 60
    assert not plan_continuity(conversation(56), messages(90, 1), api="responses",
                               settings=CACHE_AWARE, baseline=False, idle_s=30).rotate


def test_a_ceiling_below_the_window_is_refused() -> None:
    with pytest.raises(ConfigError, match="COACH_PRUNE_CEILING_MESSAGES"):
        PruneSettings(keep_messages=20, prune_at_messages=24, ceiling_messages=22)


def test_the_cache_aware_rule_is_opt_in() -> None:
    from services.threads.config import Settings

    prune = Settings.from_env({"DATABASE_URL": "postgresql://x/y"}).prune
    assert (prune.cache_cold_after_s, prune.ceiling_messages) == (0, 200)
    opted = Settings.from_env({"DATABASE_URL": "postgresql://x/y",
                               "COACH_PRUNE_CACHE_COLD_SECONDS": "86400"}).prune
    assert opted.cache_cold_after_s == 86400


# ---- rotating ahead of the next turn (issue 19: a rotation off the reply's path) --------------

AHEAD = PruneSettings(keep_messages=20, prune_at_messages=24, rotate_ahead=True)


def test_with_rotation_ahead_a_turn_rotates_itself_only_two_windows_past_the_limit() -> None:
    # A conversation rotated ahead holds the window (20); the turn appends what came since.
    plan = plan_continuity(conversation(20), messages(30, 6), api="responses", settings=AHEAD,
                           baseline=False)
    assert not plan.rotate and len(plan.append) == 6
    # The backstop, when rotations ahead fell behind: 24 + 2 x 20.
    assert AHEAD.turn_rotates_above == 64
    assert not plan_continuity(conversation(40), messages(90, 22), api="responses",
                               settings=AHEAD, baseline=False).rotate  # 40 + 22 + 2 = 64
    plan = plan_continuity(conversation(40), messages(90, 23), api="responses", settings=AHEAD,
                           baseline=False)
    assert plan.rotate and plan.reason == "window_full"
    # Without it, the turn rotates as soon as the window is full.
    assert plan_continuity(conversation(20), messages(30, 6), api="responses",
                           settings=PruneSettings(), baseline=False).rotate


def test_rotation_ahead_is_on_with_the_fold_and_the_window_rule_only() -> None:
    from services.threads.config import Settings

    def prune(**env: str) -> PruneSettings:
        return Settings.from_env({"DATABASE_URL": "postgresql://x/y", **env}).prune

    assert prune().rotate_ahead
    assert not prune(COACH_ROTATE_AHEAD="false").rotate_ahead
    assert not prune(COACH_FOLD_AFTER_REPLY="false").rotate_ahead
    assert not prune(COACH_PRUNE_CACHE_COLD_SECONDS="86400").rotate_ahead
    with pytest.raises(ConfigError, match="window rule"):
        PruneSettings(cache_cold_after_s=60, rotate_ahead=True)


def test_with_rotation_ahead_a_turn_carries_more_than_a_window_of_unseen_messages() -> None:
    # 42 canned and cheap messages since the last turn (21 exchanges): carried, not a
    # rotation on the path.
    assert AHEAD.unseen_read_limit == 65
    plan = plan_continuity(conversation(20), messages(30, 42), api="responses",
                           settings=AHEAD, baseline=False)
    assert not plan.rotate and len(plan.append) == 42
    # More than a turn may run on (20 + 43 + 2 > 64): it rotates itself.
    plan = plan_continuity(conversation(20), messages(30, 43), api="responses",
                           settings=AHEAD, baseline=False)
    assert plan.rotate and plan.reason == "window_full"
    # Without rotation ahead, more than a window unseen rotates whatever was held.
    assert PruneSettings().unseen_read_limit == 21
    assert plan_continuity(conversation(2), messages(30, 21), api="responses",
                           settings=PruneSettings(), baseline=False).reason == "unseen_beyond_window"


def test_rotating_ahead_folds_twice_a_rotations_worth_at_a_time() -> None:
    from services.threads.config import Settings

    def fold_min(**env: str) -> int:
        return Settings.from_env({"DATABASE_URL": "postgresql://x/y", **env}).fold.min_messages

    assert fold_min() == 8  # (24 - 20) x 2: each fold brings a rotation
    assert fold_min(COACH_ROTATE_AHEAD="false") == 4  # one Summarize call per rotation
    assert fold_min(COACH_FOLD_MIN_MESSAGES="6") == 6
