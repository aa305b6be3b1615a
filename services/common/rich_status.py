"""Rich error status (AIP-193), both ways: a domain error as the ``google.rpc.Status`` a
server aborts with, and a failed call's code, reason and field violations as a client reads
them."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.errors import CoachError, FieldViolation

DOMAIN = "coach"


def status_for(error: CoachError) -> grpc.Status:
    """A google.rpc.Status with ErrorInfo (+ BadRequest, RetryInfo) for ``error``."""
    details: list[any_pb2.Any] = []
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    if error.retry_after_s is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(int(error.retry_after_s * 1000))
        packed = any_pb2.Any()
        packed.Pack(retry)
        details.append(packed)
    code = getattr(code_pb2, error.code, code_pb2.INTERNAL)
    return rpc_status.to_status(status_pb2.Status(code=code, message=error.message, details=details))


def error_from_rpc(exc: grpc.aio.AioRpcError) -> tuple[str, str, list[FieldViolation]]:
    """(status code name, ErrorInfo reason, violations) of a failed call, for clients."""
    reason = ""
    violations: list[FieldViolation] = []
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return exc.code().name, reason, violations

