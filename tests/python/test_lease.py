"""Leases of the Python client against the real quotad: released on `with` exit and on an
exception, commit refunds, renewal past the TTL, loss visible to its holder, and a SIGKILLed
worker's slot freed after the TTL."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import quotad
from conftest import Quotad, eventually, read_line


def test_lease_is_released_on_with_exit(client):
    with client.acquire("py/with", "jobs") as lease:
        assert lease.granted and lease.held
        assert len(lease.id) == 32 and len(lease.request_id) == 32
        assert [x.lease_id for x in client.leases("py/with")] == [lease.id]
        assert not client.acquire("py/with", "jobs").granted  # the one slot is taken
    assert not lease.held
    assert client.leases("py/with") == []
    with client.acquire("py/with", "jobs") as again:
        assert again.granted


def test_lease_is_released_when_the_block_raises(client):
    class UpstreamFailed(Exception):
        pass

    with pytest.raises(UpstreamFailed):
        with client.acquire("py/raise", "jobs") as lease:
            assert lease.granted
            raise UpstreamFailed()
    assert not lease.held
    assert client.leases("py/raise") == []
    assert client.acquire("py/raise", "jobs").granted


def test_denial_is_a_value_with_retry_after(client):
    with client.acquire("py/with", "jobs") as held:
        denied = client.acquire("py/with", "jobs")
        assert held and not denied
        assert denied.granted is False
        assert denied.limited_by == "jobs.concurrent"
        assert denied.retry_after > 0
        assert denied.retry_after_timedelta.total_seconds() == pytest.approx(denied.retry_after)
        assert denied.retry_at is not None and denied.id == ""
        assert not denied.held
        with denied:  # a denial holds nothing; leaving it does nothing
            pass
        with pytest.raises(quotad.FailedPrecondition):
            denied.release()


def test_commit_refunds_what_the_upstream_did_not_charge(client):
    lease = client.acquire("py/commit", "calls", cost=10)
    assert lease.granted and client.usage("py/commit").limits[0].used == 10
    result = lease.commit(4)
    assert result.refunded == 6
    assert client.usage("py/commit").limits[0].used == 4
    with pytest.raises(quotad.FailedPrecondition):
        lease.commit(4)  # already released
    with client.acquire("py/commit", "calls", cost=2) as l2:
        with pytest.raises(quotad.InvalidArgument):
            l2.commit(3)  # more than the cost
        assert l2.held


def test_renewal_keeps_a_lease_alive_past_its_ttl(client):
    with client.acquire("py/renew", "jobs") as lease:  # TTL 1 s, concurrency: renewed
        assert lease.renewing
        first = lease.expires_at
        assert eventually(lambda: lease.expires_at.timestamp() > first.timestamp() + 1.5,
                          timeout=10), "the lease was never renewed"
        # quotad agrees: the lease lives past its first TTL
        (live,) = client.leases("py/renew")
        assert live.expires_at.timestamp() > first.timestamp() + 1.0
        assert lease.held and not lease.lost
        assert not client.acquire("py/renew", "jobs").granted
    assert client.acquire("py/renew", "jobs").granted


def test_async_lease_is_renewed_and_released(config_path):
    async def main(address):
        async with quotad.AsyncQuotaClient(address, holder="python-test") as c:
            async with await c.acquire("py/async", "jobs") as lease:
                assert lease.granted and lease.renewing
                first = lease.expires_at
                deadline = time.monotonic() + 10
                while lease.expires_at.timestamp() <= first.timestamp() + 1.5:
                    assert time.monotonic() < deadline, "never renewed"
                    await asyncio.sleep(0.05)
                assert not (await c.acquire("py/async", "jobs")).granted
            assert not lease.held
            assert await c.leases("py/async") == []

    q = Quotad(config_path)
    try:
        asyncio.run(main(q.address))
    finally:
        q.stop()


def test_losing_a_lease_is_visible_to_its_holder(config_path):
    # A server of its own, killed while the lease is held: renewals fail until it expired.
    q = Quotad(config_path)
    c = quotad.QuotaClient(q.address, retry=quotad.RetryPolicy(max_attempts=1))
    lost = []
    called = threading.Event()

    def on_lost(err):
        lost.append(err)
        called.set()

    try:
        lease = c.acquire("py/lost", "jobs", lease_ttl=0.6, on_lost=on_lost)
        assert lease.granted and lease.renewing
        q.stop(signal.SIGKILL)
        assert called.wait(10), "on_lost was never called"
        assert lease.lost and not lease.held
        assert isinstance(lease.lost_error, quotad.DeadlineExceeded)
        assert len(lost) == 1 and lost[0] is lease.lost_error
    finally:
        c.close()
        q.stop(signal.SIGKILL)


def test_a_killed_workers_slot_is_freed_after_the_ttl(server, client):
    worker = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__),
                                                            "lease_worker.py"),
                               server.address, "py/kill", "jobs"],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = read_line(worker, "held lease=", 20)
        assert line, "the worker never got its lease"
        (live,) = client.leases("py/kill")
        assert live.holder == "lease_worker"
        first = live.expires_at.timestamp()
        # The worker renews: its lease outlives its first expiry while it lives.
        assert eventually(lambda: [l.expires_at.timestamp() > first + 1.0
                                   for l in client.leases("py/kill")] == [True])
        assert not client.acquire("py/kill", "jobs").granted
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(10) == -signal.SIGKILL
        killed = time.monotonic()
        got = []
        assert eventually(lambda: got.append(client.acquire("py/kill", "jobs")) or got[-1].granted,
                          timeout=10), "the killed worker's slot was never freed"
        assert time.monotonic() - killed <= 5
        got[-1].release()
    finally:
        worker.kill()
        worker.wait()


def test_detached_lease_is_left_to_its_ttl(client):
    lease = client.acquire("py/detach", "jobs", renew=False)
    lease_id = lease.detach()
    del lease  # no release on garbage collection of a detached lease
    assert [l.lease_id for l in client.leases("py/detach")] == [lease_id]
    assert client.release_lease(lease_id).freed == 1
