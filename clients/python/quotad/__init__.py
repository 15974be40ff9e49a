"""quotad: the Python client of quotad, the rate-limit coordinator for shared upstream API keys.

    import quotad
    client = quotad.QuotaClient("localhost:50051")
    with client.acquire_or_wait("virustotal/prod", "requests", timeout=120) as lease:
        r = session.get(url)                      # the upstream call
        client.report("virustotal/prod", "requests", r)

A denial is a value (``lease.granted is False``, ``retry_after``, ``limited_by``); errors raise
``QuotaError`` subclasses named after the gRPC code. ``AsyncQuotaClient`` is the asyncio twin.
"""

from quotad._common import (LimitState, ReleaseResult, ReportResult, RetryPolicy,
                            THROTTLE_STATUSES, new_request_id)
from quotad._admin import LeaseInfo, Usage
from quotad._errors import (Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded, Denied,
                            FailedPrecondition, Internal, InvalidArgument, NotFound, OutOfRange,
                            PermissionDenied, QuotaError, ResourceExhausted, Unauthenticated,
                            Unavailable, Unimplemented, Unknown)
from quotad._client import Lease, PrefetchPool, QuotaClient
from quotad._aio import AsyncLease, AsyncPrefetchPool, AsyncQuotaClient

__version__ = "0.1.0"

__all__ = [
    "QuotaClient", "AsyncQuotaClient", "Lease", "AsyncLease", "PrefetchPool", "AsyncPrefetchPool",
    "RetryPolicy", "LimitState", "ReleaseResult", "ReportResult", "Usage", "LeaseInfo",
    "THROTTLE_STATUSES", "new_request_id",
    "QuotaError", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
    "Denied",
]
