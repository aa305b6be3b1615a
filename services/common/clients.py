"""Channels to the other services of the suite, created once per process."""

from __future__ import annotations

import json

import grpc

from services.common.peer_channel import PeerChannel
from services.common.settings import PeerSettings

# round_robin over every address a name resolves to. No retry policy on
# server-returned statuses: the llm service already retries the upstream with
# backoff, and retrying its UNAVAILABLE here would multiply upstream calls.
# gRPC still retries transparently a call that never reached a server.
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def open_channel(peer: PeerSettings) -> grpc.aio.Channel:
    """A channel to ``peer`` with auth, request-id propagation, keepalive and retries.

    ``dns:///host:port`` addresses spread calls over every address the name
    resolves to (round_robin), e.g. a Kubernetes headless service.
    """
    options = [
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ]
    # The token and request id ride on PeerChannel, not on a grpc.aio client interceptor:
    # the same metadata without an extra task and call object per call.
    if peer.tls.ca_file or peer.tls.enabled:
        creds = grpc.ssl_channel_credentials(
            root_certificates=peer.tls.read(peer.tls.ca_file),
            private_key=peer.tls.read(peer.tls.key_file) if peer.tls.require_client_cert else None,
            certificate_chain=peer.tls.read(peer.tls.cert_file) if peer.tls.require_client_cert else None,
        )
        return PeerChannel(grpc.aio.secure_channel(peer.address, creds, options=options),
                           peer.auth_token)
    return PeerChannel(grpc.aio.insecure_channel(peer.address, options=options), peer.auth_token)
