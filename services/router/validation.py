"""Input rules of the router's RPCs. Bad input stores nothing and costs nothing.

Every violation is collected (not just the first) and raised as one
``InvalidArgument`` carrying ``BadRequest`` field violations.
"""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.common.errors import Validator

MAX_USER_ID = 128
MAX_MESSAGE = 4000
MAX_REQUEST_ID = 128
MAX_RESPONSE_TYPE = 64
MAX_DISPLAY_NAME = 128
MAX_HISTORY_TURNS = 50
MAX_STREAK = 1_000_000


@lru_cache(maxsize=1024)
def known_timezone(name: str) -> bool:
    if len(name) > 64 or "\x00" in name or name.startswith(("/", ".")) or ".." in name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _text(v: Validator, field: str, value: str, limit: int, *, required: bool) -> None:
    if required and not value.strip():
        v.add(field, "is required and must not be blank")
        return
    if len(value) > limit:
        v.add(field, f"must be at most {limit} characters (got {len(value)})")
    if "\x00" in value:
        v.add(field, "must not contain NUL characters")


def check_context(
    v: Validator,
    display_name: str,
    current_streak: int,
    local_hour: int | None,
    timezone: str,
    prefix: str = "context",
) -> None:
    _text(v, f"{prefix}.display_name", display_name, MAX_DISPLAY_NAME, required=False)
    if current_streak < 0:
        v.add(f"{prefix}.current_streak", "must be zero or more")
    elif current_streak > MAX_STREAK:
        v.add(f"{prefix}.current_streak", f"must be at most {MAX_STREAK}")
    if local_hour is not None and not 0 <= local_hour <= 23:
        v.add(f"{prefix}.local_hour", "must be between 0 and 23")
    if timezone and not known_timezone(timezone):
        v.add(f"{prefix}.timezone", f"{timezone[:64]!r} is not a known IANA timezone name")


def check_chat(
    user_id: str,
    message: str,
    request_id: str,
    response_type: str,
    display_name: str,
    current_streak: int,
    local_hour: int | None,
    timezone: str,
) -> None:
    v = Validator()
    _text(v, "user_id", user_id, MAX_USER_ID, required=True)
    _text(v, "message", message, MAX_MESSAGE, required=True)
    _text(v, "request_id", request_id, MAX_REQUEST_ID, required=False)
    _text(v, "response_type", response_type, MAX_RESPONSE_TYPE, required=False)
    check_context(v, display_name, current_streak, local_hour, timezone)
    v.raise_if_any()


def check_classify(
    user_id: str,
    message: str,
    display_name: str,
    current_streak: int,
    local_hour: int | None,
    timezone: str,
    message_count: int | None,
    history: list[tuple[int, str]],
    valid_roles: set[int],
) -> None:
    v = Validator()
    _text(v, "user_id", user_id, MAX_USER_ID, required=False)
    _text(v, "message", message, MAX_MESSAGE, required=True)
    check_context(v, display_name, current_streak, local_hour, timezone)
    if message_count is not None and message_count < 0:
        v.add("message_count", "must be zero or more")
    if len(history) > MAX_HISTORY_TURNS:
        v.add("history", f"must have at most {MAX_HISTORY_TURNS} turns")
    for i, (role, text) in enumerate(history[:MAX_HISTORY_TURNS]):
        if role not in valid_roles:
            v.add(f"history[{i}].role", "must be ROLE_USER or ROLE_COACH")
        _text(v, f"history[{i}].text", text, MAX_MESSAGE, required=False)
    v.raise_if_any()
