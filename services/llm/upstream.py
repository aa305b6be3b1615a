"""The openai SDK clients of the two tiers, and how their errors are classified.

One ``AsyncOpenAI`` per tier, created once at start-up, each with its own
HTTP connection pool sized for hundreds of concurrent calls: by default on the
SDK's aiohttp transport (``DefaultAioHttpClient``: the same httpx2 client API and
error types, with aiohttp's C HTTP parser underneath; about 0.7 ms less CPU and
0.5-0.9 ms less latency per call than the SDK's default ``DefaultAsyncHttpxClient``
on this machine), or on that default with ``COACH_UPSTREAM_HTTP=httpx``. The SDK's own retries are off
(``max_retries=0``): ``services.llm.resilience`` retries, with the caller's
deadline in mind.

The cheap tier calls Chat Completions through ``create_chat_completion``: the
request ``client.chat.completions.create`` would send, without the SDK's per-call
type-driven walk over the body (a third of the service's CPU per ``Complete`` at a
zero-latency upstream; our bodies are plain JSON, which it returns unchanged) and
without building a ``ChatCompletion`` model from the answer (about half a
millisecond more); ``services.llm.cheap_tier`` reads the few fields it needs.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import httpx2
import openai

from services.llm.config import UpstreamSettings
from services.llm.resilience import FailureKind, UpstreamFailure

CONNECT_TIMEOUT_S = 5.0


def create_client(settings: UpstreamSettings, call_timeout_s: float) -> openai.AsyncOpenAI:
    http_class = (openai.DefaultAioHttpClient if settings.transport == "aiohttp"
                  else openai.DefaultAsyncHttpxClient)
    http_client = http_class(
        limits=httpx2.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_keepalive,
            keepalive_expiry=30.0,
        ),
        timeout=httpx2.Timeout(call_timeout_s, connect=min(CONNECT_TIMEOUT_S, call_timeout_s)),
    )
    return openai.AsyncOpenAI(
        api_key=settings.api_key,
        base_url=settings.base_url,
        max_retries=0,
        timeout=httpx2.Timeout(call_timeout_s, connect=min(CONNECT_TIMEOUT_S, call_timeout_s)),
        http_client=http_client,
    )


def prepare(client: openai.AsyncOpenAI) -> None:
    """Import now what the SDK would import on a tier's first call (its resources load lazily),
    so the first answer after start-up is not slower than the rest."""
    _ = (client.chat.completions, client.responses, client.conversations, client.beta.assistants,
         client.beta.threads)


async def create_chat_completion(
    client: openai.AsyncOpenAI, params: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """``POST /chat/completions`` (non-streaming) with ``params`` as the JSON body, as
    ``client.chat.completions.create(**params, timeout=timeout)`` would send it (same path,
    headers, auth, timeout and error classes); the answer's JSON object.

    ``params`` must be plain JSON values (no ``Omit``, dates, files or SDK models). The
    answer is not turned into a ``ChatCompletion`` (the SDK's recursive model construction
    costs about half a millisecond per answer); a body that is not a JSON object raises
    ``openai.APIResponseValidationError`` (classified as a server error)."""
    response = await client.post(
        "/chat/completions",
        cast_to=httpx2.Response,
        body=params,
        options={"timeout": timeout, "security": {"bearer_auth": True}},
    )
    try:
        data = json.loads(response.content)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise openai.APIResponseValidationError(
            response, response.text[:500], message="the upstream answer is not a JSON object"
        )
    return data


def retry_after_seconds(headers: httpx2.Headers | None) -> float | None:
    """``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), if present."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(float(raw_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(raw)
    if parsed is None:
        return None
    return max(email.utils.mktime_tz(parsed) - time.time(), 0.0)


def classify(exc: BaseException) -> UpstreamFailure | None:
    """An SDK exception as an ``UpstreamFailure``; None for anything else (a bug: re-raised)."""
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamFailure(FailureKind.TIMEOUT, "timed out")
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamFailure(FailureKind.CONNECTION, str(exc) or "connection failed")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = _message(exc)
        retry_after = retry_after_seconds(exc.response.headers if exc.response is not None else None)
        if status == 429:
            return UpstreamFailure(FailureKind.RATE_LIMITED, message, status, retry_after)
        if status in (408, 409) or status >= 500:
            return UpstreamFailure(FailureKind.SERVER_ERROR, message, status, retry_after)
        if status in (401, 403):
            return UpstreamFailure(FailureKind.AUTH, message, status)
        if status == 404:
            return UpstreamFailure(FailureKind.NOT_FOUND, message, status)
        return UpstreamFailure(FailureKind.REJECTED, message, status)
    if isinstance(exc, httpx2.TimeoutException):
        return UpstreamFailure(FailureKind.TIMEOUT, "timed out")
    if isinstance(exc, httpx2.TransportError):
        return UpstreamFailure(FailureKind.CONNECTION, str(exc) or type(exc).__name__)
    if isinstance(exc, openai.APIResponseValidationError):
        return UpstreamFailure(FailureKind.SERVER_ERROR, "malformed upstream response", exc.status_code)
    return None


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:500]
    return str(exc.message)[:500]
