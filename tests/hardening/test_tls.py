"""TLS and mutual TLS from COACH_TLS_* certificate files: the whole suite talks TLS to itself,
Chat works over it, a plaintext client is refused, and with mTLS so is a client without a cert."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from coach.router.v1 import router_service_pb2 as router_pb
from coach.router.v1 import router_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.hardening.certs import Certs, make_certs
from tests.helpers.status import call_failure, recorded_in_ledger
from tests.helpers.suite import Suite, start_suite, stop_suite


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("certs")))


def tls_env(certs: Certs, mutual: bool) -> dict[str, str]:
    return {
        "COACH_TLS_CERT_FILE": str(certs.server_cert),
        "COACH_TLS_KEY_FILE": str(certs.server_key),
        "COACH_TLS_CA_FILE": str(certs.ca),
        "COACH_TLS_REQUIRE_CLIENT_CERT": "true" if mutual else "false",
    }


@pytest.fixture(scope="module", params=["tls", "mtls"])
async def secured(request: Any, pg_url: str, offline_openai: Any,
                  certs: Certs) -> AsyncIterator[tuple[Suite, bool]]:
    mutual = request.param == "mtls"
    suite = await start_suite(pg_url, offline_openai, tls_env(certs, mutual))
    yield suite, mutual
    await stop_suite(suite)


def chat(user: str) -> router_pb.ChatRequest:
    return router_pb.ChatRequest(
        user_id=user, request_id=uuid.uuid4().hex,
        message="I missed my workout again and I feel like I'm failing, can you help me plan?")


async def test_chat_works_over_tls_end_to_end(secured: Any, certs: Certs) -> None:
    suite, mutual = secured
    creds = grpc.ssl_channel_credentials(
        root_certificates=certs.read(certs.ca),
        private_key=certs.read(certs.client_key) if mutual else None,
        certificate_chain=certs.read(certs.client_cert) if mutual else None,
    )
    user = f"tls-{uuid.uuid4().hex[:8]}"
    for address in (suite.services["router"].address,
                    suite.services["router"].address.replace("127.0.0.1", "localhost")):
        async with grpc.aio.secure_channel(address, creds) as channel:
            reply = await router_service_pb2_grpc.RouterServiceStub(channel).Chat(chat(user),
                                                                                 timeout=20)
        # Not a fallback: router -> threads -> llm all spoke TLS (with mTLS, presenting certs).
        assert reply.messages and reply.route == 3, reply  # ROUTE_ASSISTANT
    assert len(await recorded_in_ledger(suite.env["DATABASE_URL"], user, 2)) == 2  # relay over TLS


async def test_a_plaintext_client_is_refused(secured: Any) -> None:
    suite, _ = secured
    async with grpc.aio.insecure_channel(suite.services["router"].address) as channel:
        failure = await call_failure(router_service_pb2_grpc.RouterServiceStub(channel).Chat,
                                     chat("tls-plain"), timeout=3)
    assert failure is not None and failure.code == grpc.StatusCode.UNAVAILABLE, failure


async def test_a_client_that_does_not_trust_the_ca_is_refused(secured: Any, tmp_path: Path) -> None:
    suite, _ = secured
    other = make_certs(tmp_path / "other")
    creds = grpc.ssl_channel_credentials(root_certificates=other.read(other.ca))
    async with grpc.aio.secure_channel(suite.services["router"].address, creds) as channel:
        failure = await call_failure(health_pb2_grpc.HealthStub(channel).Check,
                                     health_pb2.HealthCheckRequest(), timeout=3)
    assert failure is not None and failure.code == grpc.StatusCode.UNAVAILABLE, failure


async def test_with_mutual_tls_a_client_without_a_certificate_is_refused(
    secured: Any, certs: Certs
) -> None:
    suite, mutual = secured
    creds = grpc.ssl_channel_credentials(root_certificates=certs.read(certs.ca))
    async with grpc.aio.secure_channel(suite.services["threads"].address, creds) as channel:
        failure = await call_failure(health_pb2_grpc.HealthStub(channel).Check,
                                     health_pb2.HealthCheckRequest(), timeout=3)
    if mutual:
        assert failure is not None and failure.code == grpc.StatusCode.UNAVAILABLE, failure
    else:
        assert failure is None  # plain TLS: any client that trusts the CA may connect
