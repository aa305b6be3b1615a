"""A failed call to a peer service, re-raised with the peer's own status code and reason."""

from __future__ import annotations

from services.common.errors import CoachError, FieldViolation


class PeerCallFailed(CoachError):
    """Keeps the peer's canonical code (UNAVAILABLE, RESOURCE_EXHAUSTED, ...) and reason,
    so the router sees exactly what the llm service said."""

    def __init__(
        self,
        peer: str,
        code: str,
        message: str,
        reason: str,
        violations: list[FieldViolation] | None = None,
    ) -> None:
        super().__init__(
            f"{peer}: {message}" if message else f"{peer} call failed with {code}",
            reason=reason or f"{peer.upper()}_{code}",
            metadata={"peer": peer},
            violations=violations,
        )
        self.code = code
        self.peer = peer
