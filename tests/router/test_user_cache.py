"""The router's cache of user state: exact while the change stream is live, off otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date

from services.common.errors import Unavailable
from services.common.exchange import Exchange, UserState
from services.common.vocabulary import MessageType, Route, Turn
from services.router.user_cache import Change, UserStateCache, follow_changes
from tests.helpers.polling import eventually


def state(count: int = 4) -> UserState:
    return UserState(message_count=count,
                     recent_turns=(Turn("user", "hey"), Turn("coach", "Morning!")),
                     existing=None, messages_today=2, last_canned_reply="Morning!")


def answer(user: str, rid: str, route: Route = Route.PATTERN, text: str = "Nice work!") -> Exchange:
    return Exchange(request_id=rid, user_id=user, user_text="done", coach_texts=(text,),
                    route=route, message_type=MessageType.CHECK_IN)


def test_off_until_live_then_exact_with_each_answer() -> None:
    day = [date(2026, 11, 27)]
    cache = UserStateCache(max_users=10, recent_turns=3, today=lambda: day[0])
    cache.put("u", state(), cache.epoch())
    assert cache.get("u", "") is None and len(cache) == 0  # off: nothing kept
    cache.go_live()
    assert cache.get("u", "") is None  # a miss
    cache.put("u", state(), cache.epoch())
    cache.record(answer("u", "r1"))
    got = cache.get("u", "")
    assert got is not None
    assert (got.message_count, got.messages_today, got.last_canned_reply) == (5, 3, "Nice work!")
    assert got.recent_turns == (Turn("coach", "Morning!"), Turn("user", "done"),
                                Turn("coach", "Nice work!"))
    replay = cache.get("u", "r1")
    assert replay is not None and replay.existing == answer("u", "r1")
    cache.record(answer("u", "r1"))  # the same answer again changes nothing
    assert cache.get("u", "").message_count == 5  # type: ignore[union-attr]
    cache.record(answer("u", "r2", Route.COMPLETIONS, "Try 20 minutes."))
    assert cache.get("u", "").last_canned_reply == "Nice work!"  # type: ignore[union-attr]
    day[0] = date(2026, 11, 28)
    assert cache.get("u", "").messages_today == 0  # type: ignore[union-attr]


def test_a_fetch_that_raced_a_change_is_not_cached() -> None:
    cache = UserStateCache(max_users=10, recent_turns=6)
    cache.go_live()
    epoch = cache.epoch()
    cache.drop("someone")  # a change arrived while the fetch was in flight
    cache.put("u", state(), epoch)
    assert cache.get("u", "") is None


def test_least_recently_used_users_go_first() -> None:
    cache = UserStateCache(max_users=2, recent_turns=6)
    cache.go_live()
    for user in ("a", "b"):
        cache.put(user, state(), cache.epoch())
    cache.get("a", "")
    cache.put("c", state(), cache.epoch())
    assert cache.get("b", "") is None and cache.get("a", "") is not None


async def test_follows_the_change_stream_and_goes_dark_when_it_breaks() -> None:
    cache = UserStateCache(max_users=10, recent_turns=6)
    feed: asyncio.Queue[Change | Exception] = asyncio.Queue()
    streams = 0

    async def stream() -> AsyncIterator[Change]:
        nonlocal streams
        streams += 1
        while True:
            item = await feed.get()
            if isinstance(item, Exception):
                raise item
            yield item

    task = asyncio.create_task(follow_changes(cache, stream, "me", retry_max_s=0.05))
    await feed.put(Change("", ""))
    await eventually(lambda: cache.live, what="the cache live once the stream is")
    for user in ("mine", "theirs"):
        cache.put(user, state(), cache.epoch())
    await feed.put(Change("mine", "me"))        # this router's own write: still exact
    await feed.put(Change("theirs", "other"))   # another replica's write: dropped
    await eventually(lambda: cache.get("theirs", "") is None, what="their user dropped")
    assert cache.get("mine", "") is not None
    await feed.put(Unavailable("threads restarting"))
    await eventually(lambda: not cache.live, what="the cache off while the stream is down")
    assert len(cache) == 0
    await feed.put(Change("", ""))  # watched again: live, empty
    await eventually(lambda: cache.live, what="the cache live again")
    assert streams == 2
    task.cancel()
