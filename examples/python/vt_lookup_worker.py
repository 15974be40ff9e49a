#!/usr/bin/python3
"""A VirusTotal-style hash lookup worker on requests, sharing one API key through quotad.

    python3 examples/python/vt_lookup_worker.py --server=localhost:50051 \
        --credential=virustotal/prod --hashes=8

For each hash it waits for quota (quotad's fair queue, then retry_after), calls
GET /api/v3/files/{sha256}, refunds the unit when the upstream throttled (a 429 is not charged),
and reports every answer so that quotad learns the upstream's own count and throttles.

Without --upstream it starts a stand-in for VirusTotal on 127.0.0.1 that knows every third hash
and enforces its own limit (--upstream_per_second), answering 429 with Retry-After beyond it:
run against quotad, the worker never sees one.
"""

import argparse
import collections
import hashlib
import http.server
import sys
import threading
import time

import requests

import quotad


def fake_virustotal(per_second: int) -> str:
    """Starts the stand-in upstream; returns its base URL."""
    lock, calls = threading.Lock(), collections.deque()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            now = time.monotonic()
            with lock:
                while calls and calls[0] <= now - 1.0:
                    calls.popleft()
                throttled = len(calls) >= per_second
                if not throttled:
                    calls.append(now)
            sha = self.path.rsplit("/", 1)[-1]
            if throttled:
                status, body, extra = 429, b'{"error":{"code":"QuotaExceededError"}}', {"Retry-After": "1"}
            elif int(sha[:4], 16) % 3 == 0:
                status, body, extra = 200, b'{"data":{"type":"file","attributes":{"reputation":0}}}', {}
            else:
                status, body, extra = 404, b'{"error":{"code":"NotFoundError"}}', {}
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="localhost:50051")
    ap.add_argument("--credential", default="virustotal/prod")
    ap.add_argument("--feature", default="requests")
    ap.add_argument("--hashes", type=int, default=8)
    ap.add_argument("--wait", type=float, default=120, help="seconds to wait for quota per call")
    ap.add_argument("--upstream", default="", help="base URL; empty: a local stand-in")
    ap.add_argument("--upstream_per_second", type=int, default=5)
    a = ap.parse_args()

    upstream = a.upstream or fake_virustotal(a.upstream_per_second)
    quota = quotad.QuotaClient(a.server, holder="vt_lookup_worker")
    http_ = requests.Session()
    http_.trust_env = False
    seen = collections.Counter()
    start = time.monotonic()
    for i in range(a.hashes):
        sha256 = hashlib.sha256(f"sample-{i}".encode()).hexdigest()
        # ---- the whole quotad integration: four lines ----
        with quota.acquire_or_wait(a.credential, a.feature, timeout=a.wait) as lease:
            r = http_.get(f"{upstream}/api/v3/files/{sha256}", headers={"x-apikey": "KEY"}, timeout=10)
            lease.commit(0 if r.status_code == 429 else 1)    # a throttled call was not charged
        quota.report(a.credential, a.feature, r)              # quotad learns the upstream's view
        seen[r.status_code] += 1
        verdict = {200: "known", 404: "unknown", 429: "THROTTLED"}.get(r.status_code, r.status_code)
        print(f"{time.monotonic() - start:6.2f}s  {sha256[:16]}  {verdict}", flush=True)
    usage = quota.usage(a.credential)
    print(f"done: {a.hashes} lookups in {time.monotonic() - start:.2f}s, "
          f"known={seen[200]} unknown={seen[404]} upstream_429={seen[429]}")
    for l in usage.limits:
        print(f"  {l.name}: used {l.used}/{l.capacity}")
    quota.close()
    return 0 if seen[429] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
