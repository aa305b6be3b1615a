"""One vocabulary: the domain enums are the proto enums, member for member."""

from __future__ import annotations

from coach.type.v1 import types_pb2

from services.common.exchange import Exchange
from services.common.usage import Charge, Usage
from services.common.vocabulary import MessageType, Route, Turn
from services.router import classifier


def _proto(enum: object, prefix: str) -> dict[str, int]:
    return {name.removeprefix(prefix): number
            for name, number in enum.items()  # type: ignore[attr-defined]
            if not name.endswith("_UNSPECIFIED")}


def test_routes_and_message_types_are_the_protos_names_and_numbers() -> None:
    assert {r.name: r.value for r in Route} == _proto(types_pb2.Route, "ROUTE_")
    assert {t.name: t.value for t in MessageType} == _proto(types_pb2.MessageType, "MESSAGE_TYPE_")
    assert Route.from_proto_name("ROUTE_PATTERN") is Route.PATTERN
    assert MessageType.CHECK_IN.proto_name == "MESSAGE_TYPE_CHECK_IN"


def test_the_classifiers_message_types_are_the_shared_ones() -> None:
    # One enum: the router's decision carries the shared type, no mapping by name.
    assert classifier.MessageType is MessageType
    assert classifier.PriorTurn is Turn


def test_a_journal_line_written_before_still_reads() -> None:
    line = {"request_id": "r-1", "user_id": "ana", "user_text": "quick q", "coach_texts": ["Yes."],
            "route": "COMPLETIONS", "message_type": "QUESTION", "pattern": "",
            "model": "gpt-5.4-mini", "conversation_id": "", "latency_ms": 12,
            "charges": [{"model": "gpt-5.4-mini", "purpose": "answer", "input_tokens": 90,
                         "cached_input_tokens": 0, "output_tokens": 12, "reasoning_tokens": 0}]}
    exchange = Exchange.from_json(line)
    assert exchange.route is Route.COMPLETIONS and exchange.message_type is MessageType.QUESTION
    assert exchange.answer_usage == Usage(input_tokens=90, output_tokens=12)
    assert exchange.charges == (Charge("gpt-5.4-mini", Usage(90, 0, 12, 0)),)
    assert exchange.to_json() == line


def test_cache_writes_tier_and_truncation_survive_the_journal() -> None:
    charge = Charge("gpt-5.6-sol", Usage(3000, 1024, 200, 0, cache_write_tokens=1200,
                                         service_tier="flex", truncated=True))
    assert Charge.from_json(charge.to_json()) == charge
    proto = types_pb2.Charge(**charge.fields())
    assert Charge.of(proto) == charge
