"""The synchronous client: QuotaClient, Lease and PrefetchPool."""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import random
import threading
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar, Union

import grpc

from quotad._common import (AcquireArgs, Duration, LeaseBase, LeaseState, LimitState, RETRYABLE,
                            ReleaseResult, ReportResult, RetryPolicy, THROTTLE_STATUSES,
                            channel_credentials, default_holder, from_timestamp_pb,
                            looks_like_response, new_request_id, read_maybe_file, report_request, report_result,
                            seconds)
from quotad._errors import Denied, FailedPrecondition, error_from_rpc
from quotad._admin import LeaseInfo, Usage, lease_infos, usage_from_pb
from quotad.v1 import quotad_pb2 as pb
from quotad.v1 import quotad_pb2_grpc as pb_grpc

__all__ = ["QuotaClient", "Lease", "PrefetchPool"]

log = logging.getLogger("quotad.client")
F = TypeVar("F", bound=Callable[..., Any])


class Lease(LeaseBase):
    """A granted lease, or a denial (``granted`` False). A context manager:

        with client.acquire("virustotal/prod", "requests") as lease:
            if lease.granted:
                ...                     # call the upstream
                lease.commit(1)         # optional: the upstream charged 1 of lease.cost

    A granted lease still held at the end of the ``with`` block (also on an exception) is
    released without a refund; errors of that release are logged, not raised (quotad's TTL frees
    the lease anyway). A renewing lease is kept alive by the client's renewer thread until then;
    if quotad loses it, ``lost`` turns True and ``on_lost`` is called from that thread.
    Thread-safe for ``held``, ``lost``, ``lost_error`` and ``expires_at``; release it from one
    thread. A lease garbage-collected while held is released then.
    """

    def __init__(self, resp: "pb.AcquireResponse", args: AcquireArgs, request_id: str,
                 client: "QuotaClient") -> None:
        super().__init__(resp, args, request_id)
        self._client = client

    def commit(self, used: int) -> ReleaseResult:
        """Releases the lease, reporting that the upstream charged ``used`` units (0..cost); quotad
        refunds the rest on windows still open. FailedPrecondition when not held."""
        return self._release(used)

    def release(self) -> ReleaseResult:
        """Releases the lease without a refund. FailedPrecondition when not held."""
        return self._release(None)

    def detach(self) -> str:
        """Stops managing the lease (no renewal, no release on exit) and returns its id, e.g. to
        hand it to another process; quotad's TTL or a ``release_lease(id)`` ends it."""
        self._detach()
        self._client._renewer.discard(self._state)
        return self.id

    def _release(self, used: Optional[int]) -> ReleaseResult:
        req = self._begin_release(used)
        self._client._renewer.discard(self._state)
        try:
            resp, _ = self._client._call("Release", req)
        except Exception as e:
            # A retry that finds no lease: the first attempt released it but its answer was lost.
            if getattr(e, "code", None) == grpc.StatusCode.NOT_FOUND and getattr(e, "attempts", 1) > 1:
                return ReleaseResult()
            raise
        return ReleaseResult(resp.refunded, resp.freed)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.held:
            try:
                self.release()
            except Exception as e:  # noqa: BLE001  (the TTL frees it; never mask the block's error)
                log.warning("release of lease %s failed: %s", self.id, e)

    def __del__(self) -> None:
        try:
            if self.held:
                self.release()
        except Exception:  # noqa: BLE001
            pass


class _Renewer:
    """Renews leases in one background thread, at about a third of their TTL. Thread-safe."""

    def __init__(self, client: "QuotaClient") -> None:
        self._stub = client._stub
        self._timeout = client.call_timeout
        self._metadata = client._metadata
        self._cv = threading.Condition()
        self._states: List[LeaseState] = []
        self._stop = False
        self._thread: Optional[threading.Thread] = None

    def add(self, state: LeaseState) -> None:
        with self._cv:
            if self._stop:
                return
            self._states.append(state)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="quotad-renewer",
                                                daemon=True)
                self._thread.start()
            self._cv.notify()

    def discard(self, state: Optional[LeaseState]) -> None:
        with self._cv:
            if state in self._states:
                self._states.remove(state)
                self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._stop:
                        return
                    now = time.monotonic()
                    due = [s for s in self._states if s.next_renew <= now]
                    if due:
                        break
                    nxt = min((s.next_renew for s in self._states), default=now + 3600)
                    self._cv.wait(timeout=max(0.0, nxt - now))
            for s in due:
                self._renew(s)

    def _renew(self, state: LeaseState) -> None:
        with state.lock:
            if state.released or state.lost is not None:
                return
        req = pb.RenewRequest(lease_id=state.id)
        if state.ttl > 0:
            req.ttl.FromNanoseconds(int(state.ttl * 1e9))
        try:
            resp = self._stub.Renew(req, timeout=state.renew_timeout(self._timeout),
                                    metadata=self._metadata)
        except grpc.RpcError as e:
            lost = state.failed(e.code(), e.details() or "")
            if lost is None:
                return
            self.discard(state)
            if state.on_lost is not None:
                try:
                    state.on_lost(lost)
                except Exception:  # noqa: BLE001
                    log.exception("on_lost callback of lease %s raised", state.id)
            return
        with state.lock:
            if state.released:
                return
        state.renewed(from_timestamp_pb(resp.lease_expires_at).timestamp())


class QuotaClient:
    """A client of one quotad. Thread-safe: share one per process.

        client = QuotaClient("quotad:50051")                       # plaintext
        client = QuotaClient("quotad:443", tls=True, token=TOKEN,  # TLS + bearer token
                             root_certificates="ca.pem")

    ``target`` is "host:port" or a ready grpc.Channel (the client then does not close it).
    Every call has a deadline of ``call_timeout`` seconds (an acquire that waits in quotad's queue
    gets its ``max_wait`` more). UNAVAILABLE, RESOURCE_EXHAUSTED and ABORTED are retried per ``retry``
    with exponential back-off and jitter; an acquire keeps its request_id across those retries,
    so quotad charges it once. ``holder`` is shown to operators (default "pid-PID@HOST").
    ``token`` is sent as "authorization: Bearer TOKEN" on every call; over plaintext only with
    ``insecure_token=True`` (e.g. on loopback). Owns one background thread (the renewer), started
    with the first renewing lease; ``close()`` (or ``with``) stops it and closes the channel.
    """

    def __init__(self, target: Union[str, grpc.Channel] = "localhost:50051", *,
                 holder: Optional[str] = None, call_timeout: Duration = 5.0,
                 retry: RetryPolicy = RetryPolicy(), token: Optional[str] = None,
                 tls: bool = False, root_certificates: Union[bytes, str, None] = None,
                 private_key: Union[bytes, str, None] = None,
                 certificate_chain: Union[bytes, str, None] = None,
                 channel_options: Sequence[Tuple[str, Any]] = (),
                 insecure_token: bool = False,
                 throttle_statuses: frozenset = THROTTLE_STATUSES) -> None:
        self.holder = holder or default_holder()
        self.call_timeout = seconds(call_timeout) if seconds(call_timeout) > 0 else 5.0
        self.retry = retry
        self.throttle_statuses = throttle_statuses
        if token and not tls and not isinstance(target, grpc.Channel) and not insecure_token:
            raise ValueError("a bearer token over plaintext: use tls=True, or insecure_token=True "
                             "on a trusted network")
        self._metadata: Tuple[Tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        self._owns_channel = not isinstance(target, grpc.Channel)
        if isinstance(target, grpc.Channel):
            self._channel = target
        elif tls:
            creds = channel_credentials(read_maybe_file(root_certificates),
                                        read_maybe_file(private_key),
                                        read_maybe_file(certificate_chain))
            self._channel = grpc.secure_channel(target, creds, options=list(channel_options))
        else:
            self._channel = grpc.insecure_channel(target, options=list(channel_options))
        self._stub = pb_grpc.QuotaStub(self._channel)
        self._admin = pb_grpc.AdminStub(self._channel)
        self._renewer = _Renewer(self)

    # ---- lifecycle ----

    def close(self) -> None:
        """Stops renewing (live leases then expire at their TTL) and closes the channel."""
        self._renewer.stop()
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "QuotaClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- calls ----

    def _call(self, name: str, req: Any, extra: float = 0.0, stub: Any = None) -> Tuple[Any, int]:
        """One RPC with retries of UNAVAILABLE / RESOURCE_EXHAUSTED / ABORTED: (response, attempts)."""
        method = getattr(stub or self._stub, name)
        pauses = self.retry.backoffs()
        attempts = 0
        while True:
            attempts += 1
            try:
                return method(req, timeout=self.call_timeout + extra,
                              metadata=self._metadata), attempts
            except grpc.RpcError as e:
                pause = next(pauses, None) if e.code() in RETRYABLE else None
                if pause is None:
                    err = error_from_rpc(e)
                    err.attempts = attempts  # type: ignore[attr-defined]
                    raise err from None
                time.sleep(pause)

    def acquire(self, credential: str, feature: str, *, scope: str = "", cost: int = 1,
                lease_ttl: Optional[Duration] = None, max_wait: Optional[Duration] = None,
                client_wait: Optional[Duration] = None, priority: int = 0,
                request_id: Optional[str] = None, renew: Union[bool, str] = "auto",
                on_lost: Optional[Callable[[Exception], Any]] = None) -> Lease:
        """Asks quotad for ``cost`` units of ``feature`` on ``credential``.

        Returns a Lease: granted, or a denial with ``retry_after`` and ``limited_by`` (a denial is
        a value, not an exception). Raises a QuotaError subclass on errors (InvalidArgument,
        NotFound, PermissionDenied, Unavailable after the retries, ...).

        ``max_wait``: how long quotad may queue the request for capacity (fair, by ``priority``).
        ``client_wait``: how long this client may keep asking again after denials, sleeping each
        denial's ``retry_after``. ``lease_ttl``: the lease's lifetime (None: the feature's default).
        ``request_id``: idempotency key (None: a random one, kept across transport retries); give
        your own to make the acquire idempotent across process restarts. ``renew``: "auto" renews
        in the background when the grant holds a concurrency slot; True always, False never.
        ``on_lost(error)`` is called once, from the renewer thread, if quotad loses the lease.
        """
        args = AcquireArgs(credential, feature, scope, cost, seconds(lease_ttl), seconds(max_wait),
                           seconds(client_wait), priority, request_id or "", renew, on_lost)
        wait_until = time.monotonic() + max(0.0, args.client_wait)
        for round_ in range(1 << 30):
            req = args.request(self.holder, round_)
            resp, _ = self._call("Acquire", req, extra=max(0.0, args.max_wait))
            lease = Lease(resp, args, req.request_id, self)
            if lease.granted:
                if lease.renewing:
                    self._renewer.add(lease._state)  # type: ignore[arg-type]
                return lease
            now = time.monotonic()
            if now >= wait_until:
                return lease
            pause = lease.retry_after if lease.retry_after > 0 else self.retry.initial_backoff
            time.sleep(min(pause * random.uniform(0.95, 1.05) + 0.001, wait_until - now))
        raise AssertionError("unreachable")

    def acquire_or_wait(self, credential: str, feature: str, *, timeout: Duration = 60.0,
                        **kwargs: Any) -> Lease:
        """A granted lease, waiting up to ``timeout`` for it: in quotad's fair queue first, then
        asking again after each denial's retry_after. Raises Denied when none came in time."""
        t = seconds(timeout)
        lease = self.acquire(credential, feature, max_wait=min(t, 3600.0), client_wait=t, **kwargs)
        if not lease.granted:
            raise Denied(lease)
        return lease

    def limited(self, credential: str, feature: str, *, cost: int = 1, wait: Duration = 60.0,
                report: bool = True, **kwargs: Any) -> Callable[[F], F]:
        """A decorator for a function that calls the upstream once:

            @client.limited("virustotal/prod", "requests", wait=120)
            def lookup(sha256): return session.get(f"{VT}/files/{sha256}")

        Each call first gets a lease (``acquire_or_wait``; Denied when none came in ``wait``
        seconds) and releases it when the function returns or raises. When the function returns a
        requests / httpx response and ``report`` is True, it is reported to quotad (errors of the
        report are logged, not raised)."""
        def decorate(fn: F) -> F:
            @functools.wraps(fn)
            def wrapper(*a: Any, **k: Any) -> Any:
                with self.acquire_or_wait(credential, feature, timeout=wait, cost=cost, **kwargs):
                    sent_at = _dt.datetime.now(_dt.timezone.utc)
                    result = fn(*a, **k)
                if report and looks_like_response(result):
                    try:
                        self.report(credential, feature, result, sent_at=sent_at)
                    except Exception as e:  # noqa: BLE001
                        log.warning("report to quotad failed: %s", e)
                return result
            return wrapper  # type: ignore[return-value]
        return decorate

    def report(self, credential: str, feature: str, response: Any, *,
               observed_at: Optional[_dt.datetime] = None,
               sent_at: Optional[_dt.datetime] = None) -> ReportResult:
        """Tells quotad what the upstream answered, so that it adopts the upstream's count and cools
        the feature down on a throttle.

        ``response``: a requests.Response, an httpx.Response, or (status, headers, body). Only the
        rate-limit headers and Retry-After are sent, and the body (its first 64 KiB) only for a
        throttle (429, 420). ``observed_at``: when the answer was seen (default: now).
        ``sent_at``: when the request was sent; give it: quotad then compares a sliding window's
        count with its own grants of the period before the request instead of before the answer
        (see the README's Report section)."""
        req = report_request(credential, feature, response, observed_at=observed_at,
                             sent_at=sent_at, body_statuses=self.throttle_statuses)
        resp, _ = self._call("Report", req)
        return report_result(resp)

    def prefetch(self, credential: str, feature: str, block_size: int = 16,
                 **acquire_kwargs: Any) -> "PrefetchPool":
        """A PrefetchPool on this client (see PrefetchPool)."""
        return PrefetchPool(self, credential, feature, block_size, **acquire_kwargs)

    def release_lease(self, lease_id: str, used: Optional[int] = None,
                      request_id: Optional[str] = None) -> ReleaseResult:
        """Releases a lease by id (one this client does not manage, e.g. a detached one)."""
        req = pb.ReleaseRequest(lease_id=lease_id, request_id=request_id or new_request_id())
        if used is not None:
            req.used = used
        resp, _ = self._call("Release", req)
        return ReleaseResult(resp.refunded, resp.freed)

    # ---- Admin (operators; used by `python3 -m quotad`) ----

    def usage(self, credential: str) -> Usage:
        """Every limit of ``credential``: used, remaining, reset time."""
        req = pb.GetUsageRequest(credential=credential)
        resp, _ = self._call("GetUsage", req, stub=self._admin)
        while resp.next_page_token:  # every page, into the first answer
            req.page_token = resp.next_page_token
            page, _ = self._call("GetUsage", req, stub=self._admin)
            resp.limits.extend(page.limits)
            resp.next_page_token = page.next_page_token
        return usage_from_pb(resp)

    def leases(self, credential: str = "") -> List[LeaseInfo]:
        """Live leases (of one credential, or all), soonest expiry first."""
        req = pb.ListLeasesRequest(credential=credential)
        resp, _ = self._call("ListLeases", req, stub=self._admin)
        while resp.next_page_token:  # every page, into the first answer
            req.page_token = resp.next_page_token
            page, _ = self._call("ListLeases", req, stub=self._admin)
            resp.leases.extend(page.leases)
            resp.next_page_token = page.next_page_token
        return lease_infos(resp)


class PrefetchPool:
    """Prefetch for hot loops, as the C++ PrefetchPool: takes a block of up to ``block_size``
    units in one acquire (cost N) and hands them out one by one without a round trip. When a block
    is used up, the next ``take()`` commits it (used = N) and acquires the next one; when quotad has
    fewer than a block left, the block shrinks to what remains, so no unit is ever handed out that
    quotad did not grant. ``shutdown()`` (or leaving ``with``) commits the current block with the
    units actually handed out, and quotad refunds the rest. Thread-safe.
    """

    def __init__(self, client: QuotaClient, credential: str, feature: str, block_size: int = 16,
                 **acquire_kwargs: Any) -> None:
        self._client = client
        self._credential = credential
        self._feature = feature
        self._block_size = max(1, block_size)
        acquire_kwargs.pop("request_id", None)   # every block is its own decision
        acquire_kwargs.pop("cost", None)
        self._kwargs = acquire_kwargs
        self._lock = threading.Lock()
        self._block: Optional[Lease] = None
        self._block_taken = 0
        self.handed_out = 0
        self.granted = 0
        self.retry_after = 0.0
        self._shut_down = False

    def _commit_block(self) -> None:
        block, taken = self._block, self._block_taken
        self._block, self._block_taken = None, 0
        if block is not None and block.held:
            block.commit(taken)

    def take(self) -> bool:
        """One unit: True when handed out, False when quotad denied (see ``retry_after``).
        Raises a QuotaError when quotad could not be asked, FailedPrecondition after shutdown."""
        with self._lock:
            if self._shut_down:
                raise FailedPrecondition("the prefetch pool was shut down")
            b = self._block
            if b is not None and b.held and self._block_taken < b.cost:
                self._block_taken += 1
                self.handed_out += 1
                return True
            self._commit_block()
            cost = self._block_size
            for round_ in range(2):
                lease = self._client.acquire(self._credential, self._feature, cost=cost,
                                             **self._kwargs)
                if lease.granted:
                    self.granted += lease.cost
                    self._block, self._block_taken = lease, 1
                    self.handed_out += 1
                    return True
                self.retry_after = lease.retry_after
                # Fewer than a block left: ask for exactly what every limit still has.
                left = min((l.remaining for l in lease.limits if l.capacity > 0), default=0)
                if round_ > 0 or left <= 0 or left >= cost:
                    return False
                cost = left
            return False

    def shutdown(self) -> None:
        """Commits the current block with the units handed out from it. Idempotent."""
        with self._lock:
            if self._shut_down:
                return
            self._shut_down = True
            self._commit_block()

    def __enter__(self) -> "PrefetchPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
