"""Exceptions of the quotad client: one class per gRPC status code.

A denial is never an exception: ``acquire()`` returns a ``Lease`` whose ``granted`` is False.
Errors (bad input, an unknown credential, quotad unreachable after the retries) raise a
``QuotaError`` subclass named after the gRPC code, e.g. ``InvalidArgument`` or ``Unavailable``.
``Denied`` is raised only by the helpers that promise a grant (``acquire_or_wait()`` and the
``limited`` decorator) when none came in time.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

import grpc

__all__ = [
    "QuotaError", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
    "Denied", "error_from_rpc", "error_for_code",
]


class QuotaError(Exception):
    """An error answer of quotad (or of the transport): ``code`` is the gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str = "", code: Optional[grpc.StatusCode] = None) -> None:
        if code is not None:
            self.code = code
        self.details = details
        super().__init__(f"{self.code.name}: {details}" if details else self.code.name)


class Cancelled(QuotaError):
    code = grpc.StatusCode.CANCELLED


class Unknown(QuotaError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(QuotaError):
    """Malformed input: a bad name, cost <= 0 or above what the feature could ever grant, ..."""
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(QuotaError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(QuotaError):
    """An unknown credential, feature or lease (an expired lease is unknown)."""
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(QuotaError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(QuotaError):
    """The token's identity may not use this method on this credential or lease."""
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(QuotaError):
    """quotad's own limits: a full wait queue, too many scopes in a feature."""
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(QuotaError):
    """Raised by the client itself, e.g. when releasing a lease that is not held."""
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(QuotaError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(QuotaError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(QuotaError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(QuotaError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(QuotaError):
    """quotad unreachable (after the retries), its store cannot write, or it is shutting down."""
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(QuotaError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(QuotaError):
    """No, a malformed or an unknown bearer token."""
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: Dict[grpc.StatusCode, Type[QuotaError]] = {
    cls.code: cls for cls in (Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound,
                              AlreadyExists, PermissionDenied, ResourceExhausted,
                              FailedPrecondition, Aborted, OutOfRange, Unimplemented, Internal,
                              Unavailable, DataLoss, Unauthenticated)
}


def error_for_code(code: grpc.StatusCode, details: str = "") -> QuotaError:
    """The QuotaError subclass instance for ``code``."""
    return _BY_CODE.get(code, QuotaError)(details, code)


def error_from_rpc(e: grpc.RpcError) -> QuotaError:
    """Converts a grpc.RpcError (sync or grpc.aio) to its QuotaError subclass."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = e.details() if hasattr(e, "details") else str(e)
    return error_for_code(code or grpc.StatusCode.UNKNOWN, details or "")


class Denied(Exception):
    """No grant came in time (``acquire_or_wait()``, ``limited``). ``lease`` is the last denial."""

    def __init__(self, lease: "object") -> None:
        self.lease = lease
        retry_after = getattr(lease, "retry_after", 0.0)
        limited_by = getattr(lease, "limited_by", "")
        super().__init__(f"no quota: limited by {limited_by or '?'}, retry after {retry_after:.3f}s")
