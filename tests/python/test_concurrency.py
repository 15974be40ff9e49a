"""Many callers on one quotad: 64 threads and 64 asyncio tasks never hold more than a concurrency
limit's capacity, nor get more than a window's capacity granted; prefetch never hands out more
than quotad granted and gives back what it did not hand out."""

import asyncio
import threading
import time

import pytest

import quotad

CALLERS = 64
CAPACITY = 4   # py-pool: slots.concurrent
WINDOW = 40    # py-calls: window.per_hour


class Gauge:
    """Counts callers inside their lease; remembers the most at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = self.most = self.done = 0

    def enter(self):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self):
        with self.lock:
            self.now -= 1
            self.done += 1


def test_64_threads_never_exceed_the_capacity(server, client):
    gauge, errors = Gauge(), []
    start = threading.Barrier(CALLERS)

    def worker():
        try:
            start.wait(10)
            with client.acquire_or_wait("py/threads", "slots", timeout=30) as lease:
                assert lease.granted
                gauge.enter()
                time.sleep(0.005)  # the upstream call
                gauge.leave()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert gauge.done == CALLERS
    assert 1 <= gauge.most <= CAPACITY
    assert client.leases("py/threads") == []


def test_64_threads_get_exactly_a_windows_capacity(client):
    start = threading.Barrier(CALLERS)
    granted = []

    def worker():
        start.wait(10)
        lease = client.acquire("py/window_threads", "window")
        granted.append(lease.granted)
        if not lease.granted:
            assert lease.limited_by == "window.per_hour"

    threads = [threading.Thread(target=worker) for _ in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(granted) == CALLERS
    assert sum(granted) == WINDOW
    assert client.usage("py/window_threads").limits[-1].used == WINDOW


@pytest.mark.asyncio
async def test_64_asyncio_tasks_never_exceed_the_capacity(server):
    gauge = Gauge()
    async with quotad.AsyncQuotaClient(server.address, holder="python-test") as c:
        go = asyncio.Event()

        async def task():
            await go.wait()
            async with await c.acquire_or_wait("py/tasks", "slots", timeout=30) as lease:
                assert lease.granted
                gauge.enter()
                await asyncio.sleep(0.005)  # the upstream call
                gauge.leave()

        tasks = [asyncio.create_task(task()) for _ in range(CALLERS)]
        go.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert gauge.done == CALLERS
        assert 1 <= gauge.most <= CAPACITY
        assert await c.leases("py/tasks") == []

        results = await asyncio.gather(*[c.acquire("py/window_tasks", "window")
                                          for _ in range(CALLERS)])
        assert sum(l.granted for l in results) == WINDOW
        assert (await c.usage("py/window_tasks")).limits[-1].used == WINDOW


def test_prefetch_never_hands_out_more_than_granted(client):
    with client.prefetch("py/prefetch", "calls", block_size=16) as pool:
        taken = [pool.take() for _ in range(110)]
        assert taken == [True] * 100 + [False] * 10  # capacity 100: the last block shrank to 4
        assert pool.handed_out == pool.granted == 100
        assert pool.retry_after > 0
    with pytest.raises(quotad.FailedPrecondition):
        pool.take()
    assert client.usage("py/prefetch").limits[0].used == 100


def test_prefetch_gives_back_what_it_did_not_hand_out(client):
    pool = client.prefetch("py/prefetch_refund", "calls", block_size=16)
    assert all(pool.take() for _ in range(3))
    assert client.usage("py/prefetch_refund").limits[0].used == 16
    pool.shutdown()
    assert client.usage("py/prefetch_refund").limits[0].used == 3


@pytest.mark.asyncio
async def test_async_prefetch_commits_on_exit(server):
    async with quotad.AsyncQuotaClient(server.address) as c:
        async with c.prefetch("py/decorated", "calls", block_size=8) as pool:
            assert all([await pool.take() for _ in range(10)])
            assert pool.granted == 16
        assert (await c.usage("py/decorated")).limits[0].used == 10
