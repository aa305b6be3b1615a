"""The proto packages: one shared vocabulary, no service's contract reaching into another's."""

from __future__ import annotations

import re
from pathlib import Path

from coach.router.v1 import router_service_pb2
from coach.router.v1 import types_pb2 as old_path
from coach.type.v1 import types_pb2
from google.protobuf import json_format

PROTOS = Path(__file__).resolve().parents[2] / "protos"
SERVICES = ("router", "llm", "threads", "ledger")


def test_no_service_contract_imports_another_services_package() -> None:
    for service in SERVICES:
        for proto in (PROTOS / "coach" / service).rglob("*.proto"):
            text = proto.read_text()
            imports = re.findall(r'^import (?:public )?"coach/(\w+)/', text, re.MULTILINE)
            assert set(imports) <= {service, "type"}, (proto.name, imports)


def test_code_written_against_the_old_path_still_works() -> None:
    # coach.router.v1.types_pb2 re-exports the shared vocabulary: the very same classes.
    assert old_path.UserContext is types_pb2.UserContext
    assert old_path.ROUTE_PATTERN == types_pb2.ROUTE_PATTERN == 1
    request = router_service_pb2.ChatRequest(context=old_path.UserContext(local_hour=8))
    assert request.context.local_hour == 8


def test_json_names_are_the_contracts() -> None:
    reply = router_service_pb2.ChatResponse(
        route=types_pb2.ROUTE_PATTERN, message_type=types_pb2.MESSAGE_TYPE_GREETING,
        usage=types_pb2.Usage(cached_input_tokens=3))
    as_json = json_format.MessageToDict(reply)
    assert as_json == {"route": "ROUTE_PATTERN", "messageType": "MESSAGE_TYPE_GREETING",
                       "usage": {"cachedInputTokens": "3"}}
