"""The openai SDK clients of the two tiers, the cheap tier's one request, and how their
errors are classified.

One ``AsyncOpenAI`` per tier, created once at start-up, each with its own
HTTP connection pool sized for hundreds of concurrent calls: by default on the
SDK's aiohttp transport (``DefaultAioHttpClient``: the same httpx2 client API and
error types, with aiohttp's C HTTP parser underneath, lighter per call than the SDK's
default ``DefaultAsyncHttpxClient``), or on that default with
``COACH_UPSTREAM_HTTP=httpx``. The SDK's own retries are off
(``max_retries=0``): ``services.llm.resilience`` retries, with the caller's
deadline in mind.

The cheap tier makes one kind of request, ``POST /chat/completions`` with a body of
plain JSON, and reads four fields of the answer. It goes out one of two ways
(``COACH_CHEAP_HTTP``), the same request either way:

- ``direct`` (default, ``DirectChatCompletions``): on one aiohttp session, with the
  URL and headers the tier's SDK client makes (base URL, key, organization and
  project, user agent) and the body as the SDK serializes it; failures are raised
  as the SDK's own exceptions, so they are classified and retried exactly as the
  SDK's. It leaves out the SDK's per-call request pipeline (options, URL merging,
  header building, httpx2 request and response objects around aiohttp), which was
  half of the service's own work for a cheap answer (docs/decisions.md).
- ``sdk`` (``SdkChatCompletions``): through the SDK's pipeline (``client.post``),
  for an endpoint that needs something only the SDK does.

Both skip building a ``ChatCompletion`` model from the answer (the SDK's recursive
model construction is costly for the four fields read); ``services.llm.cheap_tier``
reads the few fields it needs. The stateful tier's three busiest requests (create a
response, create a conversation, add items to one) go through the tier's SDK client with
``client.post`` and a body of plain JSON, skipping the SDK's parameter transform; the rest
(Assistants, deletes, compaction) through the SDK's methods.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import time
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import aiohttp
import httpx2
import openai
import yarl
from aiohttp.helpers import get_env_proxy_for_url
from openai.types.responses import Response

from services.llm.config import UpstreamSettings
from services.llm.resilience import FailedAttempt, FailureKind

CONNECT_TIMEOUT_S = 5.0
_T = TypeVar("_T")


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


async def _post_json(client: openai.AsyncOpenAI, path: str, body: dict[str, Any],
                     timeout: float, cast_to: type[_T]) -> _T:
    """``POST path`` with ``body`` as the JSON body through the tier's client, as the SDK's
    own methods send it (same headers, auth, timeout and error classes), skipping their
    recursive transform of the parameters against TypedDicts (plain JSON in, the same plain
    JSON out); the answer as ``cast_to`` (``httpx2.Response``: unparsed)."""
    response: _T = await client.post(
        path, cast_to=cast_to, body=body,
        options={"timeout": timeout, "security": {"bearer_auth": True}})
    return response


def _json_object(response: httpx2.Response, what: str) -> dict[str, Any]:
    """The answer's JSON object; ``openai.APIResponseValidationError`` (classified as a
    server error) when it is not one."""
    try:
        data = json.loads(response.content)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise openai.APIResponseValidationError(
            response, response.text[:500], message=f"the upstream {what} is not a JSON object")
    return data


async def create_chat_completion(
    client: openai.AsyncOpenAI, params: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """``POST /chat/completions`` (non-streaming) with ``params`` as the JSON body, as
    ``client.chat.completions.create(**params, timeout=timeout)`` would send it; the
    answer's JSON object.

    ``params`` must be plain JSON values (no ``Omit``, dates, files or SDK models). The
    answer is not turned into a ``ChatCompletion`` (the SDK's recursive model construction
    costs about half a millisecond per answer)."""
    return _json_object(
        await _post_json(client, "/chat/completions", params, timeout, httpx2.Response),
        "answer")


async def create_response(
    client: openai.AsyncOpenAI, body: dict[str, Any], timeout: float
) -> Response:
    """``POST /responses`` (non-streaming) with ``body`` as the JSON body: the request
    ``client.responses.create(**body, timeout=timeout)`` sends (same path, bytes, headers,
    auth, timeout and error classes) and the same ``Response``, without the SDK's recursive
    transform of the parameters against their TypedDicts, which took a quarter of the llm
    service's event-loop CPU under load (docs/replicas.md). ``body`` must be plain JSON
    values, as the stateful tier builds it."""
    return await _post_json(client, "/responses", body, timeout, Response)


async def add_conversation_items(
    client: openai.AsyncOpenAI, conversation_id: str, items: list[dict[str, Any]],
    timeout: float,
) -> None:
    """``POST /conversations/{id}/items``: the request ``client.conversations.items.create``
    sends, without building the typed item list from the answer (nothing reads it). Adding
    a user's canned and cheap answers this way through the SDK's methods was as much of the
    llm service's CPU as the turn itself (docs/replicas.md)."""
    await _post_json(client, f"/conversations/{quote(conversation_id, safe='')}/items",
                     {"items": items}, timeout, httpx2.Response)


async def create_conversation(
    client: openai.AsyncOpenAI, body: dict[str, Any], timeout: float
) -> str:
    """``POST /conversations`` as ``client.conversations.create(**body)`` sends it; the new
    conversation's id."""
    response = await _post_json(client, "/conversations", body, timeout, httpx2.Response)
    conversation_id = _json_object(response, "conversation").get("id")
    if not isinstance(conversation_id, str) or not conversation_id:
        raise openai.APIResponseValidationError(
            response, response.text[:500], message="the upstream conversation has no id")
    return conversation_id


class ChatCompletions(Protocol):
    """How the cheap tier posts its Chat Completions request (``COACH_CHEAP_HTTP``)."""

    async def create(self, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The answer's JSON object; failures raise the SDK's exceptions."""
        ...

    async def close(self) -> None: ...


class SdkChatCompletions:
    """Through the SDK's request pipeline (``create_chat_completion``)."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client

    async def create(self, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await create_chat_completion(self.client, params, timeout)

    async def close(self) -> None:
        """Nothing of its own: the client is closed by whoever made it."""


class DirectChatCompletions:
    """``POST {base_url}/chat/completions`` on one aiohttp session, as the SDK sends it.

    The URL and headers are taken once from the tier's SDK client (so ``OPENAI_BASE_URL``,
    the key, organization, project and any default headers apply as they do to the SDK);
    the SDK's per-request ``x-stainless-retry-count`` / ``-read-timeout`` telemetry headers
    are not sent. The body is serialized as the SDK does (byte for byte). A status of 400 or
    more raises ``openai.APIStatusError``, a timeout ``openai.APITimeoutError``, a connection
    failure ``openai.APIConnectionError`` and an answer that is not a JSON object
    ``openai.APIResponseValidationError``, with the status, headers (``retry-after``) and
    error body the SDK would give them, so ``classify`` reads them the same way.
    """

    def __init__(self, client: openai.AsyncOpenAI, max_connections: int) -> None:
        self.url = str(client.base_url).rstrip("/") + "/chat/completions"
        headers: dict[str, object] = {**client.default_headers, **client.auth_headers}
        # As the SDK does: a header set to Omit (e.g. no project) is not sent.
        self.headers = {k: v for k, v in headers.items() if isinstance(v, str)}
        # HTTPS_PROXY / NO_PROXY, as httpx honours them for the SDK: looked up once here
        # (aiohttp's trust_env would look them up in a worker thread on every request).
        self.proxy: yarl.URL | None = None
        self._proxy_auth: aiohttp.BasicAuth | None = None
        with contextlib.suppress(LookupError):
            self.proxy, self._proxy_auth = get_env_proxy_for_url(yarl.URL(self.url))
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30.0))
        return self._session

    async def create(self, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        session = self._session or self._open()
        body = json.dumps(params, ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False).encode()
        limits = aiohttp.ClientTimeout(total=timeout, sock_connect=min(CONNECT_TIMEOUT_S, timeout))
        try:
            async with session.post(self.url, data=body, headers=self.headers,
                                    allow_redirects=False, timeout=limits, proxy=self.proxy,
                                    proxy_auth=self._proxy_auth) as response:
                raw = await response.read()
                status, response_headers = response.status, response.headers
        except TimeoutError as exc:  # aiohttp's own timeouts are TimeoutErrors too
            raise openai.APITimeoutError(request=self._request()) from exc
        except aiohttp.ClientError as exc:
            raise openai.APIConnectionError(message=str(exc) or type(exc).__name__,
                                            request=self._request()) from exc
        if status >= 400:
            raise self._status_error(status, response_headers, raw)
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise openai.APIResponseValidationError(
                self._response(status, response_headers, raw), raw.decode(errors="replace")[:500],
                message="the upstream answer is not a JSON object")
        return data

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- failures: the SDK's exceptions, built only when something failed ----------------

    def _request(self) -> httpx2.Request:
        return httpx2.Request("POST", self.url)

    def _response(self, status: int, headers: Any, raw: bytes) -> httpx2.Response:
        return httpx2.Response(status, headers=list(headers.items()), content=raw,
                               request=self._request())

    def _status_error(self, status: int, headers: Any, raw: bytes) -> openai.APIStatusError:
        try:
            body: object = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace") or None
        # As the SDK's _make_status_error: the "error" object is the body it keeps.
        error = body.get("error", body) if isinstance(body, dict) else body
        return openai.APIStatusError(f"Error code: {status} - {body}",
                                     response=self._response(status, headers, raw), body=error)


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


def classify(exc: BaseException) -> FailedAttempt | None:
    """An SDK exception as a ``FailedAttempt``; None for anything else (a bug: re-raised)."""
    if isinstance(exc, openai.APITimeoutError):
        return FailedAttempt(FailureKind.TIMEOUT, "timed out")
    if isinstance(exc, openai.APIConnectionError):
        return FailedAttempt(FailureKind.CONNECTION, str(exc) or "connection failed")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = _message(exc)
        retry_after = retry_after_seconds(exc.response.headers if exc.response is not None else None)
        if status == 429:
            return FailedAttempt(FailureKind.RATE_LIMITED, message, status, retry_after)
        if status in (408, 409) or status >= 500:
            return FailedAttempt(FailureKind.SERVER_ERROR, message, status, retry_after)
        if status in (401, 403):
            return FailedAttempt(FailureKind.AUTH, message, status)
        if status == 404:
            return FailedAttempt(FailureKind.NOT_FOUND, message, status)
        return FailedAttempt(FailureKind.REJECTED, message, status)
    if isinstance(exc, httpx2.TimeoutException):
        return FailedAttempt(FailureKind.TIMEOUT, "timed out")
    if isinstance(exc, httpx2.TransportError):
        return FailedAttempt(FailureKind.CONNECTION, str(exc) or type(exc).__name__)
    if isinstance(exc, openai.APIResponseValidationError):
        return FailedAttempt(FailureKind.SERVER_ERROR, "malformed upstream response", exc.status_code)
    return None


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:500]
    return str(exc.message)[:500]
