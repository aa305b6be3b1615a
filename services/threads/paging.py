"""AIP-158 paging of a user's messages, newest first.

The page token is opaque to callers: URL-safe base64 of ``v1:<user hash>:<id>``
where id is the last message of the previous page. It is bound to the user it
was issued for, so it cannot be replayed against another user's history.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from services.common.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(requested: int) -> int:
    """AIP-158: 0 means the default; above the maximum is coerced down; negative is an error."""
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", reason="INVALID_PAGE_SIZE")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _user_tag(user_id: str) -> str:
    return hashlib.sha256(user_id.encode()).hexdigest()[:12]


def encode_page_token(user_id: str, last_id: int) -> str:
    raw = f"v1:{_user_tag(user_id)}:{last_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(user_id: str, token: str) -> int | None:
    """The id to page before, or None for the first page; INVALID_ARGUMENT when forged."""
    if not token:
        return None
    try:
        if len(token) > 200:
            raise ValueError(token)
        padded = token + "=" * (-len(token) % 4)
        version, tag, last = base64.urlsafe_b64decode(padded.encode()).decode().split(":")
        last_id = int(last)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _bad_token("page_token is not a token this service issued") from None
    if version != "v1" or tag != _user_tag(user_id) or not 0 < last_id < 2**63:
        raise _bad_token("page_token was issued for another request")
    return last_id


def _bad_token(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="INVALID_PAGE_TOKEN",
                           violations=[FieldViolation("page_token", message)])
