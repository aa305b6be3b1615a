"""Typed domain errors.

Domain code raises these; one server interceptor (``services.common.interceptors``)
maps them to canonical gRPC status codes with ``google.rpc.ErrorInfo`` (domain
``coach``, UPPER_SNAKE reason) and, for bad fields, ``google.rpc.BadRequest``.
Nothing here imports grpc.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class CoachError(Exception):
    """Base of every error a caller may see. ``code`` names a gRPC status code."""

    code: str = "INTERNAL"
    default_reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
        violations: list[FieldViolation] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.violations = list(violations or [])
        self.retry_after_s = retry_after_s


class InvalidArgument(CoachError):
    code = "INVALID_ARGUMENT"
    default_reason = "INVALID_ARGUMENT"


class NotFound(CoachError):
    code = "NOT_FOUND"
    default_reason = "NOT_FOUND"


class AlreadyExists(CoachError):
    code = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(CoachError):
    code = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(CoachError):
    code = "RESOURCE_EXHAUSTED"
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(CoachError):
    code = "UNAVAILABLE"
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(CoachError):
    code = "DEADLINE_EXCEEDED"
    default_reason = "DEADLINE_EXCEEDED"


class Unauthenticated(CoachError):
    code = "UNAUTHENTICATED"
    default_reason = "UNAUTHENTICATED"


# No upstream call reports more tokens than this; a bigger count is bad input, and it keeps
# every cost sum far inside int64 nano-USD.
MAX_TOKENS_PER_CALL = 100_000_000


class ConfigError(Exception):
    """A settings or data file is invalid; raised at start-up with a clear message."""


@dataclass
class Validator:
    """Collects field violations, then raises one InvalidArgument with all of them."""

    violations: list[FieldViolation] = field(default_factory=list)

    def add(self, field_name: str, description: str) -> None:
        self.violations.append(FieldViolation(field_name, description))

    def check(self, condition: bool, field_name: str, description: str) -> None:
        if not condition:
            self.add(field_name, description)

    def text(self, field_name: str, value: str, *, max_chars: int, required: bool = False) -> None:
        """A string field: not blank when required, at most ``max_chars``, no NUL (PostgreSQL
        text cannot hold one, so it would otherwise fail deep inside a write)."""
        if required and not value.strip():
            self.add(field_name, "is required and must not be blank")
            return
        if len(value) > max_chars:
            self.add(field_name, f"must be at most {max_chars} characters (got {len(value)})")
        if "\x00" in value:
            self.add(field_name, "must not contain NUL characters")

    def tokens(self, field_name: str, *counts: int) -> None:
        """Token counts of one upstream call: 0 <= n <= MAX_TOKENS_PER_CALL."""
        if min(counts, default=0) < 0:
            self.add(field_name, "token counts must not be negative")
        elif max(counts, default=0) > MAX_TOKENS_PER_CALL:
            self.add(field_name, f"token counts must be at most {MAX_TOKENS_PER_CALL}")

    def raise_if_any(self, reason: str = "INVALID_REQUEST") -> None:
        if self.violations:
            summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
            raise InvalidArgument(summary, reason=reason, violations=self.violations)
