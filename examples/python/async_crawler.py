#!/usr/bin/python3
"""An asyncio crawler on httpx: 50 tasks share one API key through quotad.

    python3 examples/python/async_crawler.py --server=localhost:50051 \
        --credential=cybervault/prod --tasks=50 --pages=200

Every fetch holds a lease for the duration of the request (the key's concurrency limit is a
"simultaneous burst" one, renewed in the background if a fetch outlives its TTL) and the answer
is reported to quotad. Without --upstream a stand-in provider on 127.0.0.1 enforces its own limits
(--upstream_concurrency simultaneous requests, --upstream_per_second), answering 429 with
Retry-After beyond them; with quotad in front, the crawler never sees one.
"""

import argparse
import asyncio
import collections
import sys
import time

import httpx

import quotad


class FakeProvider:
    """The stand-in upstream: an asyncio HTTP/1.1 server that counts what it was asked."""

    def __init__(self, concurrency: int, per_second: int) -> None:
        self.concurrency, self.per_second = concurrency, per_second
        self.now = self.most = self.throttled = 0
        self.calls: "collections.deque[float]" = collections.deque()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            t = time.monotonic()
            while self.calls and self.calls[0] <= t - 1.0:
                self.calls.popleft()
            self.now += 1
            self.most = max(self.most, self.now)
            over = self.now > self.concurrency or len(self.calls) >= self.per_second
            if not over:
                self.calls.append(t)
            await asyncio.sleep(0.02)  # the provider's work
            self.now -= 1
            if over:
                self.throttled += 1
                status, body, extra = "429 Too Many Requests", b'{"error":{"retry_after":1}}', "Retry-After: 1\r\n"
            else:
                status, body, extra = "200 OK", b"<html>page</html>", ""
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}"
                         f"X-RateLimit-Limit: {self.per_second}\r\n\r\n".encode() + body)
            await writer.drain()
        writer.close()

    async def start(self) -> str:
        srv = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"


async def crawl(a: argparse.Namespace) -> int:
    fake = FakeProvider(a.upstream_concurrency, a.upstream_per_second)
    upstream = a.upstream or await fake.start()
    pages: "asyncio.Queue[int]" = asyncio.Queue()
    for p in range(a.pages):
        pages.put_nowait(p)
    statuses: "collections.Counter[int]" = collections.Counter()
    start = time.monotonic()
    async with quotad.AsyncQuotaClient(a.server, holder="async_crawler") as quota, \
            httpx.AsyncClient(trust_env=False, limits=httpx.Limits(max_connections=a.tasks)) as web:

        @quota.limited(a.credential, a.feature, wait=a.wait)   # lease per fetch, answer reported
        async def fetch(page: int) -> httpx.Response:
            return await web.get(f"{upstream}/page/{page}", timeout=10)

        async def task() -> None:
            while not pages.empty():
                r = await fetch(pages.get_nowait())
                statuses[r.status_code] += 1

        await asyncio.gather(*[task() for _ in range(a.tasks)])
        usage = await quota.usage(a.credential)
    took = time.monotonic() - start
    print(f"done: {a.pages} pages by {a.tasks} tasks in {took:.2f}s ({a.pages / took:.1f}/s), "
          f"200={statuses[200]} 429={statuses[429]}")
    if not a.upstream:
        print(f"upstream saw at most {fake.most} simultaneous requests "
              f"(its limit {fake.concurrency}), throttled {fake.throttled}")
    for l in usage.limits:
        print(f"  {l.name}: used {l.used}/{l.capacity}")
    return 0 if statuses[429] == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="localhost:50051")
    ap.add_argument("--credential", default="cybervault/prod")
    ap.add_argument("--feature", default="requests")
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--wait", type=float, default=120)
    ap.add_argument("--upstream", default="")
    ap.add_argument("--upstream_concurrency", type=int, default=50)
    ap.add_argument("--upstream_per_second", type=int, default=1000)
    return asyncio.run(crawl(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
