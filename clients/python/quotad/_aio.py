"""The asyncio client (grpc.aio): AsyncQuotaClient, AsyncLease and AsyncPrefetchPool."""

from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import inspect
import logging
import random
import time
from typing import (Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar,
                    Union)

import grpc
import grpc.aio

from quotad._admin import LeaseInfo, Usage, lease_infos, usage_from_pb
from quotad._common import (AcquireArgs, Duration, LeaseBase, LeaseState, RETRYABLE,
                            ReleaseResult, ReportResult, RetryPolicy, THROTTLE_STATUSES,
                            channel_credentials, default_holder, from_timestamp_pb,
                            looks_like_response, read_maybe_file, report_request, report_result,
                            seconds)
from quotad._errors import Denied, FailedPrecondition, error_from_rpc
from quotad.v1 import quotad_pb2 as pb
from quotad.v1 import quotad_pb2_grpc as pb_grpc

__all__ = ["AsyncQuotaClient", "AsyncLease", "AsyncPrefetchPool"]

log = logging.getLogger("quotad.client")
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class AsyncLease(LeaseBase):
    """A granted lease, or a denial (``granted`` False). An async context manager:

        async with await client.acquire("virustotal/prod", "requests") as lease:
            if lease.granted:
                ...
                await lease.commit(1)

    Released without a refund at the end of the ``async with`` block (also on an exception; errors
    are logged). A renewing lease is kept alive by its own task until released; if quotad loses
    it, ``lost`` turns True and ``on_lost`` (a function or a coroutine function) is called.
    Use it from its event loop.
    """

    def __init__(self, resp: "pb.AcquireResponse", args: AcquireArgs, request_id: str,
                 client: "AsyncQuotaClient") -> None:
        super().__init__(resp, args, request_id)
        self._client = client
        self._task: Optional["asyncio.Task[None]"] = None

    async def commit(self, used: int) -> ReleaseResult:
        """Releases the lease, reporting that the upstream charged ``used`` units (0..cost)."""
        return await self._release(used)

    async def release(self) -> ReleaseResult:
        """Releases the lease without a refund. FailedPrecondition when not held."""
        return await self._release(None)

    async def _release(self, used: Optional[int]) -> ReleaseResult:
        req = self._begin_release(used)
        self._stop_renewing()
        try:
            resp, _ = await self._client._call("Release", req)
        except Exception as e:
            if getattr(e, "code", None) == grpc.StatusCode.NOT_FOUND and getattr(e, "attempts", 1) > 1:
                return ReleaseResult()
            raise
        return ReleaseResult(resp.refunded, resp.freed)

    def detach(self) -> str:
        """Stops managing the lease (no renewal, no release on exit) and returns its id."""
        self._detach()
        self._stop_renewing()
        return self.id

    def _stop_renewing(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._task = None

    async def __aenter__(self) -> "AsyncLease":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.held:
            try:
                await self.release()
            except Exception as e:  # noqa: BLE001
                log.warning("release of lease %s failed: %s", self.id, e)

    def __del__(self) -> None:
        # Cannot await here: stop renewing, so that quotad's TTL frees the lease.
        try:
            if self.held and self._state is not None:
                with self._state.lock:
                    self._state.released = True
                if self._task is not None:
                    self._task.cancel()
        except Exception:  # noqa: BLE001
            pass

    async def _renew_loop(self) -> None:
        state = self._state
        assert state is not None
        stub, timeout, md = self._client._stub, self._client.call_timeout, self._client._metadata
        while True:
            with state.lock:
                if state.released or state.lost is not None:
                    return
                delay = state.next_renew - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            req = pb.RenewRequest(lease_id=state.id)
            if state.ttl > 0:
                req.ttl.FromNanoseconds(int(state.ttl * 1e9))
            try:
                resp = await stub.Renew(req, timeout=state.renew_timeout(timeout), metadata=md)
            except grpc.RpcError as e:
                lost = state.failed(e.code(), e.details() or "")
                if lost is None:
                    continue
                if state.on_lost is not None:
                    try:
                        r = state.on_lost(lost)
                        if inspect.isawaitable(r):
                            await r
                    except Exception:  # noqa: BLE001
                        log.exception("on_lost callback of lease %s raised", state.id)
                return
            with state.lock:
                if state.released:
                    return
            state.renewed(from_timestamp_pb(resp.lease_expires_at).timestamp())


class AsyncQuotaClient:
    """The asyncio twin of QuotaClient (same arguments and guarantees), on grpc.aio. Create it
    inside the event loop that uses it; ``await client.close()`` or ``async with``.
    Renewing leases are renewed by one task each.
    """

    def __init__(self, target: Union[str, grpc.aio.Channel] = "localhost:50051", *,
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
        own = isinstance(target, str)
        if token and not tls and own and not insecure_token:
            raise ValueError("a bearer token over plaintext: use tls=True, or insecure_token=True "
                             "on a trusted network")
        self._metadata: Tuple[Tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        self._owns_channel = own
        if not own:
            self._channel = target
        elif tls:
            creds = channel_credentials(read_maybe_file(root_certificates),
                                        read_maybe_file(private_key),
                                        read_maybe_file(certificate_chain))
            self._channel = grpc.aio.secure_channel(target, creds, options=list(channel_options))
        else:
            self._channel = grpc.aio.insecure_channel(target, options=list(channel_options))
        self._stub = pb_grpc.QuotaStub(self._channel)
        self._admin = pb_grpc.AdminStub(self._channel)
        self._tasks: "set[asyncio.Task[None]]" = set()

    async def close(self) -> None:
        """Stops renewing (live leases then expire at their TTL) and closes the channel."""
        for t in list(self._tasks):
            t.cancel()
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> "AsyncQuotaClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _call(self, name: str, req: Any, extra: float = 0.0,
                    stub: Any = None) -> Tuple[Any, int]:
        method = getattr(stub or self._stub, name)
        pauses = self.retry.backoffs()
        attempts = 0
        while True:
            attempts += 1
            try:
                return await method(req, timeout=self.call_timeout + extra,
                                    metadata=self._metadata), attempts
            except grpc.RpcError as e:
                pause = next(pauses, None) if e.code() in RETRYABLE else None
                if pause is None:
                    err = error_from_rpc(e)
                    err.attempts = attempts  # type: ignore[attr-defined]
                    raise err from None
                await asyncio.sleep(pause)

    async def acquire(self, credential: str, feature: str, *, scope: str = "", cost: int = 1,
                      lease_ttl: Optional[Duration] = None, max_wait: Optional[Duration] = None,
                      client_wait: Optional[Duration] = None, priority: int = 0,
                      request_id: Optional[str] = None, renew: Union[bool, str] = "auto",
                      on_lost: Optional[Callable[[Exception], Any]] = None) -> AsyncLease:
        """See QuotaClient.acquire."""
        args = AcquireArgs(credential, feature, scope, cost, seconds(lease_ttl), seconds(max_wait),
                           seconds(client_wait), priority, request_id or "", renew, on_lost)
        wait_until = time.monotonic() + max(0.0, args.client_wait)
        round_ = 0
        while True:
            req = args.request(self.holder, round_)
            resp, _ = await self._call("Acquire", req, extra=max(0.0, args.max_wait))
            lease = AsyncLease(resp, args, req.request_id, self)
            if lease.granted:
                if lease.renewing:
                    task = asyncio.get_running_loop().create_task(lease._renew_loop())
                    lease._task = task
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                return lease
            now = time.monotonic()
            if now >= wait_until:
                return lease
            pause = lease.retry_after if lease.retry_after > 0 else self.retry.initial_backoff
            await asyncio.sleep(min(pause * random.uniform(0.95, 1.05) + 0.001, wait_until - now))
            round_ += 1

    async def acquire_or_wait(self, credential: str, feature: str, *, timeout: Duration = 60.0,
                              **kwargs: Any) -> AsyncLease:
        """See QuotaClient.acquire_or_wait. Raises Denied when no grant came in time."""
        t = seconds(timeout)
        lease = await self.acquire(credential, feature, max_wait=min(t, 3600.0), client_wait=t,
                                   **kwargs)
        if not lease.granted:
            raise Denied(lease)
        return lease

    def limited(self, credential: str, feature: str, *, cost: int = 1, wait: Duration = 60.0,
                report: bool = True, **kwargs: Any) -> Callable[[F], F]:
        """See QuotaClient.limited; decorates coroutine functions."""
        def decorate(fn: F) -> F:
            @functools.wraps(fn)
            async def wrapper(*a: Any, **k: Any) -> Any:
                lease = await self.acquire_or_wait(credential, feature, timeout=wait, cost=cost,
                                                   **kwargs)
                async with lease:
                    sent_at = _dt.datetime.now(_dt.timezone.utc)
                    result = await fn(*a, **k)
                if report and looks_like_response(result):
                    try:
                        await self.report(credential, feature, result, sent_at=sent_at)
                    except Exception as e:  # noqa: BLE001
                        log.warning("report to quotad failed: %s", e)
                return result
            return wrapper  # type: ignore[return-value]
        return decorate

    async def report(self, credential: str, feature: str, response: Any, *,
                     observed_at: Optional[_dt.datetime] = None,
                     sent_at: Optional[_dt.datetime] = None) -> ReportResult:
        """See QuotaClient.report. An httpx.Response must have been read (not streamed) when its
        body is needed, i.e. for a throttle."""
        req = report_request(credential, feature, response, observed_at=observed_at,
                             sent_at=sent_at, body_statuses=self.throttle_statuses)
        resp, _ = await self._call("Report", req)
        return report_result(resp)

    def prefetch(self, credential: str, feature: str, block_size: int = 16,
                 **acquire_kwargs: Any) -> "AsyncPrefetchPool":
        return AsyncPrefetchPool(self, credential, feature, block_size, **acquire_kwargs)

    async def usage(self, credential: str) -> Usage:
        req = pb.GetUsageRequest(credential=credential)
        resp, _ = await self._call("GetUsage", req, stub=self._admin)
        while resp.next_page_token:  # every page, into the first answer
            req.page_token = resp.next_page_token
            page, _ = await self._call("GetUsage", req, stub=self._admin)
            resp.limits.extend(page.limits)
            resp.next_page_token = page.next_page_token
        return usage_from_pb(resp)

    async def leases(self, credential: str = "") -> List[LeaseInfo]:
        req = pb.ListLeasesRequest(credential=credential)
        resp, _ = await self._call("ListLeases", req, stub=self._admin)
        while resp.next_page_token:  # every page, into the first answer
            req.page_token = resp.next_page_token
            page, _ = await self._call("ListLeases", req, stub=self._admin)
            resp.leases.extend(page.leases)
            resp.next_page_token = page.next_page_token
        return lease_infos(resp)


class AsyncPrefetchPool:
    """The asyncio twin of PrefetchPool: ``await take()``, ``await shutdown()``, ``async with``."""

    def __init__(self, client: AsyncQuotaClient, credential: str, feature: str,
                 block_size: int = 16, **acquire_kwargs: Any) -> None:
        self._client = client
        self._credential = credential
        self._feature = feature
        self._block_size = max(1, block_size)
        acquire_kwargs.pop("request_id", None)
        acquire_kwargs.pop("cost", None)
        self._kwargs = acquire_kwargs
        self._lock = asyncio.Lock()
        self._block: Optional[AsyncLease] = None
        self._block_taken = 0
        self.handed_out = 0
        self.granted = 0
        self.retry_after = 0.0
        self._shut_down = False

    async def _commit_block(self) -> None:
        block, taken = self._block, self._block_taken
        self._block, self._block_taken = None, 0
        if block is not None and block.held:
            await block.commit(taken)

    async def take(self) -> bool:
        async with self._lock:
            if self._shut_down:
                raise FailedPrecondition("the prefetch pool was shut down")
            b = self._block
            if b is not None and b.held and self._block_taken < b.cost:
                self._block_taken += 1
                self.handed_out += 1
                return True
            await self._commit_block()
            cost = self._block_size
            for round_ in range(2):
                lease = await self._client.acquire(self._credential, self._feature, cost=cost,
                                                   **self._kwargs)
                if lease.granted:
                    self.granted += lease.cost
                    self._block, self._block_taken = lease, 1
                    self.handed_out += 1
                    return True
                self.retry_after = lease.retry_after
                left = min((l.remaining for l in lease.limits if l.capacity > 0), default=0)
                if round_ > 0 or left <= 0 or left >= cost:
                    return False
                cost = left
            return False

    async def shutdown(self) -> None:
        async with self._lock:
            if self._shut_down:
                return
            self._shut_down = True
            await self._commit_block()

    async def __aenter__(self) -> "AsyncPrefetchPool":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()
