"""examples/python against the real quotad and their local stand-in upstreams: the worker and the
crawler finish, and the stand-ins (which enforce their own limits) never had to throttle them."""

import os
import subprocess
import sys

from conftest import Quotad, SOURCE_DIR, write_config

CONFIG = """
profiles:
  - name: ex-vt
    description: Stricter than the stand-in VirusTotal (5 per second).
    features:
      - name: requests
        limits:
          - {name: per_second, kind: sliding, capacity: 4, period: 1s}
  - name: ex-crawl
    description: Stricter than the stand-in provider (10 simultaneous, 120 per second).
    features:
      - name: requests
        default_lease_ttl: 2s
        limits:
          - {name: simultaneous, kind: concurrency, capacity: 10}
          - {name: per_second, kind: sliding, capacity: 100, period: 1s}
credentials:
  - {name: examples/vt, profile: ex-vt}
  - {name: examples/crawl, profile: ex-crawl}
"""


def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(SOURCE_DIR, "examples", "python", script),
                           *args], capture_output=True, text=True, timeout=60)


def test_examples_run_against_quotad(tmp_path):
    q = Quotad(write_config(str(tmp_path), CONFIG))
    try:
        vt = run("vt_lookup_worker.py", f"--server={q.address}", "--credential=examples/vt",
                 "--hashes=10", "--upstream_per_second=5")
        print(vt.stdout)
        assert vt.returncode == 0, vt.stdout + vt.stderr
        assert "done: 10 lookups" in vt.stdout and "upstream_429=0" in vt.stdout
        assert "requests.per_second: used" in vt.stdout

        crawl = run("async_crawler.py", f"--server={q.address}", "--credential=examples/crawl",
                    "--tasks=50", "--pages=200", "--upstream_concurrency=10",
                    "--upstream_per_second=120")
        print(crawl.stdout)
        assert crawl.returncode == 0, crawl.stdout + crawl.stderr
        assert "200=200 429=0" in crawl.stdout and "throttled 0" in crawl.stdout
    finally:
        q.stop()
