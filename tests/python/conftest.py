"""Fixtures of the Python client tests: the real quotad binary on a free loopback port.

QUOTAD_BINARY names the binary and PYTHONPATH holds the built package (CTest sets both; see
CMakeLists.txt). Every server gets its own small YAML config written to a temp directory.
"""

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from typing import Callable, List, Optional

import pytest

QUOTAD = os.environ.get("QUOTAD_BINARY", "")
SOURCE_DIR = os.environ.get("QUOTAD_SOURCE_DIR",
                            os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

# One credential per test so that tests sharing a server never meet.
CONFIG = """
profiles:
  - name: py-jobs
    description: One slot whose leases expire after a second unless renewed.
    features:
      - name: jobs
        default_lease_ttl: 1s
        max_lease_ttl: 10s
        limits:
          - {name: concurrent, kind: concurrency, capacity: 1}
  - name: py-pool
    description: Four slots raced by 64 threads or tasks.
    features:
      - name: slots
        default_lease_ttl: 2s
        max_lease_ttl: 10s
        limits:
          - {name: concurrent, kind: concurrency, capacity: 4}
  - name: py-calls
    description: 100 units per hour, and a window of 40 raced by 64 callers.
    features:
      - name: calls
        limits:
          - {name: per_hour, kind: sliding, capacity: 100, period: 1h}
      - name: window
        limits:
          - {name: per_hour, kind: sliding, capacity: 40, period: 1h}
      - name: scoped
        max_scopes: 1
        limits:
          - {name: per_hour, kind: sliding, capacity: 10, period: 1h, scoped: true}
  - name: py-report
    description: A per-minute window and a 429 throttle.
    throttle:
      status_codes: [429]
      backoff: {initial: 30s}
    features:
      - name: requests
        limits:
          - {name: per_minute, kind: sliding, capacity: 100, period: 1m}
credentials:
  - {name: py/with, profile: py-jobs}
  - {name: py/raise, profile: py-jobs}
  - {name: py/renew, profile: py-jobs}
  - {name: py/kill, profile: py-jobs}
  - {name: py/lost, profile: py-jobs}
  - {name: py/async, profile: py-jobs}
  - {name: py/detach, profile: py-jobs}
  - {name: py/threads, profile: py-pool}
  - {name: py/tasks, profile: py-pool}
  - {name: py/commit, profile: py-calls}
  - {name: py/dedup, profile: py-calls}
  - {name: py/restart, profile: py-calls}
  - {name: py/restart_control, profile: py-calls}
  - {name: py/prefetch, profile: py-calls}
  - {name: py/prefetch_refund, profile: py-calls}
  - {name: py/window_threads, profile: py-calls}
  - {name: py/window_tasks, profile: py-calls}
  - {name: py/errors, profile: py-calls}
  - {name: py/decorated, profile: py-calls}
  - {name: py/report, profile: py-report}
  - {name: py/tuple, profile: py-report}
  - {name: virustotal/test, profile: virustotal-public}
  - {name: metadefender/test, profile: metadefender-cloud}
  - {name: mediasilo/test, profile: mediasilo}
"""


class Quotad:
    """One quotad process on 127.0.0.1. Not thread-safe."""

    def __init__(self, config: str, *, port: int = 0, state: Optional[str] = None,
                 args: Optional[List[str]] = None) -> None:
        if not QUOTAD or not os.access(QUOTAD, os.X_OK):
            pytest.fail(f"QUOTAD_BINARY is not an executable: {QUOTAD!r}")
        self.config = config
        self.state = state
        self.extra = list(args or [])
        self.proc: Optional[subprocess.Popen] = None
        self.port = port
        self.start(port)

    def start(self, port: int = 0, timeout: float = 20.0) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="quotad_py_", suffix=".log", delete=False)
        args = [QUOTAD, f"--config={self.config}", f"--listen=127.0.0.1:{port}",
                "--sweep_interval=50ms", "--metrics_listen=127.0.0.1:0", *self.extra]
        args.append(f"--state={self.state}" if self.state else "--memory_only")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"listening address=\S+:(\d+)", self.text())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"quotad exited with {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.01)  # polls a log file: there is no event to wait on
        self.proc.kill()
        raise RuntimeError(f"quotad did not log its address:\n{self.text()}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def text(self) -> str:
        with open(self.log.name) as f:
            return f.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_config(directory: str, text: str = CONFIG) -> str:
    path = os.path.join(directory, "quotad.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def eventually(pred: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    """Polls `pred` (state held by another process has no event to wait on) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> str:
    return write_config(str(tmp_path_factory.mktemp("config")))


@pytest.fixture(scope="module")
def server(config_path):
    q = Quotad(config_path)
    yield q
    q.stop()


@pytest.fixture
def client(server):
    import quotad
    c = quotad.QuotaClient(server.address, holder="python-test")
    yield c
    c.close()


def read_line(proc: subprocess.Popen, prefix: str, timeout: float) -> Optional[str]:
    """The first stdout line of `proc` starting with `prefix`, waiting at most `timeout`."""
    found: List[str] = []
    done = threading.Event()

    def reader() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith(prefix):
                found.append(line.strip())
                break
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    done.wait(timeout)
    return found[0] if found else None
