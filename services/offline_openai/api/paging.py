"""Cursor paging of list endpoints, as OpenAI pages them (limit, order, after, before)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import bad_request


def page(
    ids_and_bodies: Sequence[tuple[str, dict[str, Any]]],
    query: Any,
    default_order: str,
) -> dict[str, Any]:
    """A cursor page: limit (1-100, default 20), order, after, before."""
    try:
        limit = int(query.get("limit", 20))
    except ValueError:
        raise bad_request("'limit' must be an integer", "limit") from None
    if not 1 <= limit <= 100:
        raise bad_request("'limit' must be between 1 and 100", "limit")
    order = query.get("order", default_order)
    if order not in ("asc", "desc"):
        raise bad_request("'order' must be 'asc' or 'desc'", "order")
    ordered = list(ids_and_bodies) if order == "asc" else list(reversed(ids_and_bodies))
    position = {item_id: index for index, (item_id, _) in enumerate(ordered)}
    start, stop = 0, len(ordered)
    after, before = query.get("after"), query.get("before")
    if after:
        if after not in position:
            raise bad_request(f"no item with id '{after}' to page after", "after")
        start = position[after] + 1
    if before:
        if before not in position:
            raise bad_request(f"no item with id '{before}' to page before", "before")
        stop = position[before]
    window = ordered[start:stop]
    page = window[:limit]
    return {
        "object": "list",
        "data": [body for _, body in page],
        "first_id": page[0][0] if page else None,
        "last_id": page[-1][0] if page else None,
        "has_more": len(window) > limit,
    }
