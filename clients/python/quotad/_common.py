"""What the sync and the asyncio clients share: options, value types, conversions, Report input.

Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import random
import secrets
import socket
import threading
import time
from typing import (Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union)

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from quotad.v1 import quotad_pb2 as pb

# Seconds as a number, or a timedelta.
Duration = Union[float, int, _dt.timedelta]

# Statuses whose body quotad may need (throttles: 429, and MediaSilo's 420).
THROTTLE_STATUSES = frozenset({420, 429})
# What quotad reads in an upstream answer (SPEC section 5); other headers are not sent.
REPORT_HEADERS = frozenset(h.lower() for h in (
    "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Used", "X-RateLimit-Reset",
    "X-RateLimit-Reset-In", "X-RateLimit-Interval", "X-RateLimit-For", "Retry-After"))
MAX_REPORT_BODY = 64 * 1024
MAX_REPORT_HEADERS = 64
MAX_HEADER_VALUE = 8192
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       grpc.StatusCode.ABORTED})


def seconds(d: Optional[Duration]) -> float:
    """A Duration as float seconds (None: 0)."""
    if d is None:
        return 0.0
    if isinstance(d, _dt.timedelta):
        return d.total_seconds()
    return float(d)


def to_duration_pb(s: float) -> duration_pb2.Duration:
    ns = int(round(s * 1e9))
    return duration_pb2.Duration(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def from_duration_pb(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def from_timestamp_pb(t: timestamp_pb2.Timestamp) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(t.seconds + t.nanos / 1e9, tz=_dt.timezone.utc)


def to_timestamp_pb(t: _dt.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(t.astimezone(_dt.timezone.utc).replace(tzinfo=None))
    return ts


def new_request_id() -> str:
    """A fresh idempotency key: 128 random bits as 32 lowercase hex digits."""
    return secrets.token_hex(16)


def default_holder() -> str:
    return f"pid-{os.getpid()}@{socket.gethostname()}"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How failed calls are retried. Only UNAVAILABLE, RESOURCE_EXHAUSTED and ABORTED are retried.

    ``max_attempts`` counts the first attempt (1 disables retries). The back-off before the second
    attempt is ``initial_backoff`` seconds, multiplied by ``multiplier`` after each retry and capped
    at ``max_backoff``; each back-off is randomised by +-``jitter`` (a fraction).
    """
    max_attempts: int = 6
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def backoffs(self) -> Iterable[float]:
        """The pauses between attempts, jittered: max_attempts - 1 of them."""
        b = self.initial_backoff
        for _ in range(max(1, self.max_attempts) - 1):
            yield b * (random.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter > 0 else 1)
            b = min(self.max_backoff, b * self.multiplier)


@dataclasses.dataclass(frozen=True)
class LimitState:
    """What one limit looked like after a decision, or in a usage snapshot."""
    name: str                      # "feature.limit", e.g. "requests.per_day"
    scope: str
    kind: str                      # "sliding", "concurrency", ... ("cooldown" for a throttle)
    capacity: int
    used: int
    remaining: int
    reset_at: Optional[_dt.datetime]  # None when nothing is pending

    @property
    def concurrency(self) -> bool:
        return self.kind == "concurrency"

    @staticmethod
    def from_pb(l: "pb.LimitStatus") -> "LimitState":
        kind = pb.LimitKind.Name(l.kind).replace("LIMIT_KIND_", "").lower()
        return LimitState(l.name, l.scope, kind, l.capacity, l.used, l.remaining,
                          from_timestamp_pb(l.reset_at) if l.HasField("reset_at") else None)


@dataclasses.dataclass(frozen=True)
class ReleaseResult:
    """What a release or commit gave back."""
    refunded: int = 0  # units returned to window and bucket limits
    freed: int = 0     # concurrency slots freed


@dataclasses.dataclass(frozen=True)
class ReportResult:
    """What quotad made of a reported upstream answer."""
    adopted: List[str]                       # limits raised to the upstream's count
    cooldown_until: Optional[_dt.datetime]   # set when the answer was a throttle
    warnings: List[str]                      # parts of the answer that were ignored


@dataclasses.dataclass(frozen=True)
class AcquireArgs:
    """One acquire's arguments after defaults; shared by both clients."""
    credential: str
    feature: str
    scope: str = ""
    cost: int = 1
    lease_ttl: float = 0.0
    max_wait: float = 0.0
    client_wait: float = 0.0
    priority: int = 0
    request_id: str = ""
    renew: Union[bool, str] = "auto"
    on_lost: Optional[Callable[[Exception], Any]] = None

    def request(self, holder: str, round_: int) -> "pb.AcquireRequest":
        req = pb.AcquireRequest(credential=self.credential, feature=self.feature, scope=self.scope,
                                cost=self.cost, holder=holder, priority=self.priority)
        if self.max_wait > 0:
            req.max_wait.CopyFrom(to_duration_pb(self.max_wait))
        if self.lease_ttl > 0:
            req.lease_ttl.CopyFrom(to_duration_pb(self.lease_ttl))
        # A new decision gets a new id; transport retries of one decision keep it.
        if not self.request_id:
            req.request_id = new_request_id()
        else:
            req.request_id = self.request_id if round_ == 0 else f"{self.request_id}.{round_}"
        return req


class LeaseState:
    """One granted lease as its renewer sees it. Thread-safe (``lock``)."""

    def __init__(self, lease_id: str, ttl: float, expires_at: float,
                 on_lost: Optional[Callable[[Exception], Any]]) -> None:
        self.id = lease_id
        self.ttl = ttl                      # asked for at acquire; 0: the feature's default
        self.on_lost = on_lost
        self.lock = threading.Lock()
        self.expires_at = expires_at        # time.time() seconds; inf when it never expires
        self.period = max(0.01, (expires_at - time.time()) / 3) if expires_at != float("inf") else 3600.0
        self.next_renew = time.monotonic() + self.period
        self.released = False
        self.lost: Optional[Exception] = None

    def renewed(self, expires_at: float) -> None:
        with self.lock:
            self.expires_at = expires_at
            self.period = max(0.01, (expires_at - time.time()) / 3)
            self.next_renew = time.monotonic() + self.period * random.uniform(0.9, 1.1)

    def renew_timeout(self, call_timeout: float) -> float:
        """One renewal attempt's deadline: bounded by what is left of the lease."""
        with self.lock:
            left = self.expires_at - time.time()
        return min(call_timeout, max(0.05, left / 2)) if left > 0 else call_timeout

    def failed(self, code: grpc.StatusCode, details: str) -> Optional[Exception]:
        """Records a failed renewal; returns the loss when the lease is lost, else None."""
        from quotad._errors import DeadlineExceeded, NotFound
        with self.lock:
            if self.released or self.lost is not None:
                return None
            now = time.time()
            if code == grpc.StatusCode.NOT_FOUND:
                self.lost = NotFound(f"lease {self.id} lost: quotad says {details}")
            elif now >= self.expires_at:
                self.lost = DeadlineExceeded(
                    f"lease {self.id} expired at {_dt.datetime.fromtimestamp(self.expires_at, _dt.timezone.utc).isoformat()}"
                    f" before a renewal got through; last error: {code.name}: {details}")
            else:
                # Try again soon, well before the expiry.
                self.next_renew = time.monotonic() + max(
                    0.01, min(self.period / 4, (self.expires_at - now) / 4))
                return None
            return self.lost


class LeaseBase:
    """The answer to an acquire: a granted lease, or a denial (``granted`` False).

    Denials: ``retry_after`` (seconds), ``retry_after_timedelta``, ``retry_at`` and ``limited_by``
    ("feature.limit"). Grants: ``id``, ``cost``, ``request_id``, ``expires_at``, ``held``, ``lost``.
    ``limits`` holds every limit the request touched, after the decision. ``bool(lease)`` is
    ``granted``.
    """

    def __init__(self, resp: "pb.AcquireResponse", args: AcquireArgs, request_id: str) -> None:
        self.granted: bool = resp.granted
        self.request_id: str = request_id
        self.limits: List[LimitState] = [LimitState.from_pb(l) for l in resp.limits]
        self.id: str = resp.lease_id if resp.granted else ""
        self.cost: int = args.cost if resp.granted else 0
        self.credential = args.credential
        self.feature = args.feature
        self.retry_after: float = 0.0 if resp.granted else from_duration_pb(resp.retry_after)
        self.retry_at: Optional[_dt.datetime] = None
        self.limited_by: str = resp.limited_by
        if not resp.granted:
            self.retry_at = (from_timestamp_pb(resp.retry_at) if resp.HasField("retry_at") else
                             _dt.datetime.now(_dt.timezone.utc) + self.retry_after_timedelta)
        self._state: Optional[LeaseState] = None
        self.renewing = False
        if resp.granted:
            exp = (from_timestamp_pb(resp.lease_expires_at).timestamp()
                   if resp.HasField("lease_expires_at") else float("inf"))
            self._state = LeaseState(resp.lease_id, args.lease_ttl, exp, args.on_lost)
            concurrency = any(l.concurrency for l in self.limits)
            self.renewing = exp != float("inf") and (
                args.renew is True or (args.renew == "auto" and concurrency))

    @property
    def retry_after_timedelta(self) -> _dt.timedelta:
        return _dt.timedelta(seconds=self.retry_after)

    @property
    def expires_at(self) -> Optional[_dt.datetime]:
        """When the lease ends unless renewed (advances with renewals); None for a denial."""
        if self._state is None:
            return None
        with self._state.lock:
            e = self._state.expires_at
        return None if e == float("inf") else _dt.datetime.fromtimestamp(e, _dt.timezone.utc)

    @property
    def held(self) -> bool:
        """True while the lease is granted, not released and not lost."""
        if self._state is None:
            return False
        with self._state.lock:
            return not self._state.released and self._state.lost is None

    @property
    def lost(self) -> bool:
        """True once quotad lost the lease (renewal answered NOT_FOUND, or it expired)."""
        return self.lost_error is not None

    @property
    def lost_error(self) -> Optional[Exception]:
        """Why the lease was lost (a NotFound or DeadlineExceeded), None while it is not."""
        if self._state is None:
            return None
        with self._state.lock:
            return self._state.lost

    def __bool__(self) -> bool:
        return self.granted

    def __repr__(self) -> str:
        if self.granted:
            return f"<Lease {self.id} cost={self.cost} held={self.held} lost={self.lost}>"
        return f"<Lease denied limited_by={self.limited_by!r} retry_after={self.retry_after:.3f}s>"

    def _detach(self) -> None:
        if self._state is not None:
            with self._state.lock:
                self._state.released = True

    def _begin_release(self, used: Optional[int]) -> "pb.ReleaseRequest":
        from quotad._errors import FailedPrecondition, InvalidArgument
        if used is not None and not 0 <= used <= self.cost:
            raise InvalidArgument(f"used must be in 0..{self.cost} (the lease's cost), got {used}")
        if not self.granted or self._state is None:
            raise FailedPrecondition("the lease was not granted")
        with self._state.lock:
            if self._state.released:
                raise FailedPrecondition("the lease was already released")
            self._state.released = True
        req = pb.ReleaseRequest(lease_id=self.id, request_id=new_request_id())
        if used is not None:
            req.used = used
        return req


# ---- Report input -----------------------------------------------------------------------------

# (status, headers, body): headers a mapping or (name, value) pairs; body bytes, str or None.
ResponseTuple = Tuple[int, Union[Mapping[str, str], Sequence[Tuple[str, str]]],
                      Union[bytes, str, None]]


def _header_pairs(headers: Any) -> List[Tuple[str, str]]:
    if headers is None:
        return []
    if hasattr(headers, "multi_items"):            # httpx.Headers: repeated headers kept
        return [(str(k), str(v)) for k, v in headers.multi_items()]
    if hasattr(headers, "items"):                  # requests' CaseInsensitiveDict, dict, Message
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]


def report_request(credential: str, feature: str, response: Any, *,
                   observed_at: Optional[_dt.datetime] = None,
                   sent_at: Optional[_dt.datetime] = None,
                   body_statuses: frozenset = THROTTLE_STATUSES) -> "pb.ReportRequest":
    """Builds a ReportRequest from a requests.Response, an httpx.Response, an object with
    ``status``/``status_code`` and ``headers``, or a (status, headers, body) tuple.

    Only what quotad reads is sent: the rate-limit headers and Retry-After, and the body (its
    first 64 KiB) only when the status is a throttle (429, 420).
    """
    if isinstance(response, tuple):
        status, headers, body = response
        get_body: Callable[[], Any] = lambda: body
    else:
        status = getattr(response, "status_code", None)
        if status is None:
            status = getattr(response, "status")
        headers = getattr(response, "headers", None)
        get_body = lambda: getattr(response, "content", None)
    status = int(status)
    req = pb.ReportRequest(credential=credential, feature=feature, http_status=status)
    total = 0
    for name, value in _header_pairs(headers):
        if name.lower() not in REPORT_HEADERS or len(req.headers) >= MAX_REPORT_HEADERS:
            continue
        value = value[:MAX_HEADER_VALUE]
        total += len(name) + len(value)
        if total > MAX_REPORT_BODY:
            break
        req.headers.add(name=name, value=value)
    if status in body_statuses:
        body = get_body()           # read only for throttles: a streamed 200 stays unread
        if isinstance(body, str):
            body = body.encode("utf-8", "replace")
        if body:
            req.body = bytes(body[:MAX_REPORT_BODY])
    req.observed_at.CopyFrom(to_timestamp_pb(observed_at or _dt.datetime.now(_dt.timezone.utc)))
    if sent_at is not None:
        req.sent_at.CopyFrom(to_timestamp_pb(sent_at))
    return req


def report_result(resp: "pb.ReportResponse") -> ReportResult:
    return ReportResult(list(resp.adopted),
                        from_timestamp_pb(resp.cooldown_until)
                        if resp.HasField("cooldown_until") else None,
                        list(resp.warnings))


def looks_like_response(x: Any) -> bool:
    """True for a requests / httpx / http.client response: something report() accepts."""
    return (hasattr(x, "status_code") or hasattr(x, "status")) and hasattr(x, "headers")


# ---- Channels ---------------------------------------------------------------------------------

def channel_credentials(root_certificates: Optional[bytes], private_key: Optional[bytes],
                        certificate_chain: Optional[bytes]) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=root_certificates,
                                        private_key=private_key,
                                        certificate_chain=certificate_chain)


def read_maybe_file(x: Union[bytes, str, None]) -> Optional[bytes]:
    """PEM bytes as given, or the contents of a file path."""
    if x is None or isinstance(x, bytes):
        return x
    with open(x, "rb") as f:
        return f.read()
