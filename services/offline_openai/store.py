"""In-memory state: conversations, responses, assistants, threads, messages, runs.

Everything lives in dicts on one event loop; nothing touches the disk. Stored
responses are bounded (oldest dropped first) so a long benchmark cannot grow
memory without limit.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .errors import not_found
from .tokens import Segment


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


@dataclass(slots=True)
class StoredItem:
    """A conversation/response item: its API body and what the model sees of it."""

    body: dict[str, Any]
    segment: Segment

    @property
    def id(self) -> str:
        return str(self.body["id"])


@dataclass(slots=True)
class Conversation:
    id: str
    created_at: int
    metadata: dict[str, Any]
    items: list[StoredItem] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "conversation",
            "created_at": self.created_at,
            "metadata": self.metadata,
        }


@dataclass(slots=True)
class ResponseRecord:
    body: dict[str, Any]
    context: list[StoredItem]  # input context + new input + output: for previous_response_id


@dataclass(slots=True)
class Assistant:
    body: dict[str, Any]


@dataclass(slots=True)
class ThreadMessage:
    body: dict[str, Any]
    segment: Segment


@dataclass(slots=True)
class Thread:
    body: dict[str, Any]
    messages: list[ThreadMessage] = field(default_factory=list)
    runs: dict[str, Run] = field(default_factory=dict)


@dataclass(slots=True)
class Run:
    body: dict[str, Any]
    pending_call_ids: list[str] = field(default_factory=list)
    tool_segments: list[Segment] = field(default_factory=list)  # calls and outputs so far
    saved_goal: str = ""
    answering_tool_output: bool = False


class StateStore:
    """All objects the offline server remembers, by id."""

    def __init__(self, max_responses: int = 200_000) -> None:
        self.conversations: dict[str, Conversation] = {}
        self.responses: OrderedDict[str, ResponseRecord] = OrderedDict()
        self.assistants: dict[str, Assistant] = {}
        self.threads: dict[str, Thread] = {}
        self._max_responses = max_responses

    def clear(self) -> None:
        self.conversations.clear()
        self.responses.clear()
        self.assistants.clear()
        self.threads.clear()

    def conversation(self, conversation_id: str) -> Conversation:
        found = self.conversations.get(conversation_id)
        if found is None:
            raise not_found("conversation", conversation_id, "conversation_id")
        return found

    def response(self, response_id: str) -> ResponseRecord:
        found = self.responses.get(response_id)
        if found is None:
            raise not_found("response", response_id, "response_id")
        return found

    def remember_response(self, record: ResponseRecord) -> None:
        self.responses[str(record.body["id"])] = record
        while len(self.responses) > self._max_responses:
            self.responses.popitem(last=False)

    def assistant(self, assistant_id: str) -> Assistant:
        found = self.assistants.get(assistant_id)
        if found is None:
            raise not_found("assistant", assistant_id, "assistant_id")
        return found

    def thread(self, thread_id: str) -> Thread:
        found = self.threads.get(thread_id)
        if found is None:
            raise not_found("thread", thread_id, "thread_id")
        return found

    def run(self, thread_id: str, run_id: str) -> tuple[Thread, Run]:
        thread = self.thread(thread_id)
        found = thread.runs.get(run_id)
        if found is None:
            raise not_found("run", run_id, "run_id")
        return thread, found
