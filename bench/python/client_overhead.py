#!/usr/bin/python3
"""The Python client's overhead per acquire/release pair against bare grpcio stub calls, in one run
against one quotad. A benchmark, not a test: it prints figures and asserts nothing.

    cmake --build build --target quotad quotad_python
    PYTHONPATH=build/clients/python /usr/bin/python3 bench/python/client_overhead.py \
        --quotad=build/service/server/quotad --pairs=3000

Starts quotad (--memory_only, a temp config with one unlimited credential) on a free loopback port
unless --server is given, then measures, interleaved in rounds so that drift hits every variant
alike (median of the rounds' per-pair means):
  bare      stub.Acquire + stub.Release (what a worker would write by hand, request_id included)
  client    with client.acquire(...): pass              (QuotaClient: lease, retries, release)
  client+c  lease = client.acquire(...); lease.commit(1)
  async     async with await aclient.acquire(...): pass  (AsyncQuotaClient on grpc.aio)
  bare-aio  await stub.Acquire + await stub.Release on grpc.aio
"""

import argparse
import asyncio
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import grpc
import grpc.aio

import quotad
from quotad.v1 import quotad_pb2 as pb
from quotad.v1 import quotad_pb2_grpc as pb_grpc

CONFIG = """
profiles:
  - name: bench
    features:
      - name: calls
        limits:
          - {name: counted, kind: unlimited}
credentials:
  - {name: bench/key, profile: bench}
"""
CRED, FEAT = "bench/key", "calls"


def start_quotad(binary):
    d = tempfile.mkdtemp(prefix="quotad_bench_")
    cfg = os.path.join(d, "quotad.yaml")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    log = open(os.path.join(d, "quotad.log"), "w+")
    proc = subprocess.Popen([binary, f"--config={cfg}", "--listen=127.0.0.1:0", "--memory_only",
                             "--metrics_listen=127.0.0.1:0"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(log.name) as f:
            m = re.search(r"listening address=(\S+)", f.read())
        if m:
            return proc, m.group(1), d
        if proc.poll() is not None:
            sys.exit(f"quotad exited: {open(log.name).read()}")
        time.sleep(0.01)
    sys.exit("quotad did not start")


def bare_pair(stub):
    r = stub.Acquire(pb.AcquireRequest(credential=CRED, feature=FEAT, cost=1, holder="bench",
                                       request_id=secrets.token_hex(16)), timeout=5)
    stub.Release(pb.ReleaseRequest(lease_id=r.lease_id, request_id=secrets.token_hex(16)),
                 timeout=5)


def client_pair(client):
    with client.acquire(CRED, FEAT):
        pass


def client_commit_pair(client):
    client.acquire(CRED, FEAT).commit(1)


async def aio_pair(aclient):
    async with await aclient.acquire(CRED, FEAT):
        pass


async def bare_aio_pair(astub):
    r = await astub.Acquire(pb.AcquireRequest(credential=CRED, feature=FEAT, cost=1,
                                              holder="bench", request_id=secrets.token_hex(16)),
                            timeout=5)
    await astub.Release(pb.ReleaseRequest(lease_id=r.lease_id, request_id=secrets.token_hex(16)),
                        timeout=5)


def timed(fn, n):
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


async def atimed(fn, n):
    t = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - t) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quotad", default="build/service/server/quotad")
    ap.add_argument("--server", default="", help="an already running quotad (needs bench/key)")
    ap.add_argument("--pairs", type=int, default=3000, help="pairs per variant")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    proc, address, tmp = (None, a.server, None) if a.server else start_quotad(a.quotad)
    n = max(1, a.pairs // a.rounds)
    try:
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.QuotaStub(channel)
        client = quotad.QuotaClient(address, holder="bench")
        sync = {"bare": lambda: bare_pair(stub), "client": lambda: client_pair(client),
                "client+commit": lambda: client_commit_pair(client)}
        for fn in sync.values():
            timed(fn, 50)  # warm up
        results = {k: [] for k in [*sync, "bare-aio", "async"]}

        async def aio_rounds():
            achannel = grpc.aio.insecure_channel(address)
            astub = pb_grpc.QuotaStub(achannel)
            aclient = quotad.AsyncQuotaClient(achannel, holder="bench")
            variants = {"bare-aio": lambda: bare_aio_pair(astub), "async": lambda: aio_pair(aclient)}
            for fn in variants.values():
                await atimed(fn, 50)
            for _ in range(a.rounds):
                for k, fn in variants.items():
                    results[k].append(await atimed(fn, n))
            await achannel.close()

        for _ in range(a.rounds):
            for k, fn in sync.items():
                results[k].append(timed(fn, n))
        asyncio.run(aio_rounds())
        med = {k: statistics.median(v) * 1e6 for k, v in results.items()}
        print(f"quotad at {address}; {n} pairs x {a.rounds} rounds per variant; median of the "
              f"rounds' mean per acquire/release pair (two RPCs)")
        print(f"{'variant':<15}{'us/pair':>10}{'overhead':>12}")
        for k, base in [("bare", "bare"), ("client", "bare"), ("client+commit", "bare"),
                        ("bare-aio", "bare-aio"), ("async", "bare-aio")]:
            over = med[k] - med[base]
            print(f"{k:<15}{med[k]:>10.1f}{(f'{over:+.1f} us' if k != base else '-'):>12}"
                  f"{(f'  ({over / med[base] * 100:+.1f}%)' if k != base else '')}")
        client.close()
        channel.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
