"""Random requests at Router.Chat and Router.Classify over gRPC: never INTERNAL, never UNKNOWN,
never a crash. Only OK, INVALID_ARGUMENT, or RESOURCE_EXHAUSTED (limits) come back."""

from __future__ import annotations

import uuid
import zoneinfo
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from coach.router.v1 import router_service_pb2 as pb
from coach.router.v1 import router_service_pb2_grpc
from coach.type.v1 import types_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hardening.threaded import ThreadedSuite

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
INT32 = st.integers(-(2**31), 2**31 - 1)
ZONES = sorted(zoneinfo.available_timezones())[:400] or ["UTC"]

# Unicode text (hypothesis leaves out surrogates, which UTF-8 cannot carry) with NUL and
# control characters likely, plus lengths around the limits.
short_text = st.text(max_size=60) | st.text(alphabet=st.sampled_from("a \x00\n\t😀é"), max_size=20)
long_text = st.integers(3995, 4005).map(lambda n: "w" * n)
message = short_text | long_text | st.sampled_from(["hi", "good morning", "I want to die", "done"])
user_id = (st.text(min_size=1, max_size=20).map(lambda s: f"prop-{s}")
           | st.text(max_size=140) | st.just("prop-" + "u" * 130))
timezone = st.sampled_from(ZONES) | st.text(max_size=70) | st.sampled_from(["", "../x", "UTC/../"])
context = st.builds(
    lambda name, streak, hour, tz: types_pb2.UserContext(
        display_name=name, current_streak=streak, timezone=tz,
        **({} if hour is None else {"local_hour": hour})),
    short_text, INT32 | st.integers(0, 400), st.none() | INT32 | st.integers(0, 23), timezone,
)
turns = st.lists(
    st.builds(lambda role, text: types_pb2.Turn(role=role, text=text),
              st.integers(-3, 4) | INT32, short_text),
    max_size=55,
)


@pytest.fixture(scope="module")
def router(pg_url: str) -> Iterator[Any]:
    suite = ThreadedSuite(pg_url, {"COACH_USER_DAILY_MESSAGES": "1000"})
    channel = grpc.insecure_channel(suite.address("router"))
    try:
        yield router_service_pb2_grpc.RouterServiceStub(channel)
    finally:
        channel.close()
        suite.close()


def _code(call: Any, request: Any) -> grpc.StatusCode:
    try:
        call(request, timeout=30)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(user=user_id, text=message, ctx=context, rid=st.none() | short_text, rtype=short_text)
def test_chat_never_fails_internally(router: Any, user: str, text: str, ctx: Any,
                                     rid: str | None, rtype: str) -> None:
    request = pb.ChatRequest(user_id=user, message=text, context=ctx, response_type=rtype,
                             request_id=uuid.uuid4().hex if rid is None else rid)
    code = _code(router.Chat, request)
    assert code in ALLOWED, (code, request)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(user=user_id | st.just(""), text=message, ctx=context, history=turns,
       count=st.none() | INT32)
def test_classify_never_fails_internally(router: Any, user: str, text: str, ctx: Any,
                                         history: list[Any], count: int | None) -> None:
    request = pb.ClassifyRequest(user_id=user, message=text, context=ctx, history=history)
    if count is not None:
        request.message_count = count
    code = _code(router.Classify, request)
    assert code in ALLOWED, (code, request)
