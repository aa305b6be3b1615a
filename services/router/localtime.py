"""The user's local hour: what canned greetings are chosen by, never the server clock."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.common.errors import FieldViolation, InvalidArgument

__all__ = ["InvalidLocalTimeError", "user_local_hour"]


class InvalidLocalTimeError(InvalidArgument, ValueError):
    """The request's local hour or timezone is unusable (maps to INVALID_ARGUMENT).

    ``field`` names the offending field of ``UserContext`` (``local_hour`` or
    ``timezone``).
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(
            f"context.{field}: {problem}",
            reason="INVALID_TIMEZONE" if field == "timezone" else "INVALID_LOCAL_HOUR",
            violations=[FieldViolation(f"context.{field}", problem)],
        )


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def user_local_hour(local_hour: int | None, timezone: str, now_utc: datetime) -> int:
    """The user's hour 0-23.

    ``local_hour`` wins when given; otherwise ``now_utc`` seen in the IANA zone
    ``timezone``; with neither, UTC. A naive ``now_utc`` is taken to be UTC.
    Raises :class:`InvalidLocalTimeError` for an hour outside 0-23 or an
    unknown zone name.
    """
    if local_hour is not None:
        if not 0 <= local_hour <= 23:
            raise InvalidLocalTimeError("local_hour", f"{local_hour} is not an hour 0-23")
        return local_hour
    if now_utc.tzinfo is None:
        now_utc = now_utc.replace(tzinfo=UTC)
    name = timezone.strip()
    if not name:
        return now_utc.astimezone(UTC).hour
    zone = _zone(name)
    if zone is None:
        raise InvalidLocalTimeError("timezone", f"{name[:64]!r} is not a known IANA timezone")
    return now_utc.astimezone(zone).hour
