"""A real quotad binary on free loopback ports, and calls to it, for the status page tests.

Used by status_page_test.py and monitoring_test.py; the Python messages come from protoc
--python_out (generated at build time into --stubs), the calls are plain grpc unary calls.
"""

import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request


class Quotad:
    """quotad --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 --memory_only, killed on exit."""

    def __init__(self, binary, config, *extra):
        self.log = tempfile.NamedTemporaryFile(prefix="quotad_status_", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [binary, f"--config={config}", "--listen=127.0.0.1:0",
             "--metrics_listen=127.0.0.1:0", "--memory_only", "--metrics_refresh=100ms",
             "--sweep_interval=100ms", *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = self.log_text()
            m = re.search(r"listening address=(\S+) .* metrics_port=(\d+)", text)
            if m:
                self.address = m.group(1)
                self.metrics_port = int(m.group(2))
                if self.metrics_port == 0:
                    self.stop()
                    raise RuntimeError(f"quotad serves no metrics listener:\n{text}")
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"quotad exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("quotad did not log its address within 20s")

    def url(self, path):
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def get(self, path, timeout=10):
        """(status, headers, body) of GET path on the metrics listener."""
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def log_text(self):
        with open(self.log.name) as f:
            return f.read()


class Client:
    """Unary calls on quotad.v1.Quota and quotad.v1.Admin with the generated messages."""

    def __init__(self, address, stubs_dir):
        sys.path.insert(0, stubs_dir)
        import grpc
        from quotad.v1 import quotad_pb2
        self.pb = quotad_pb2
        self.grpc = grpc
        self.channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(self.channel).result(timeout=10)

    def _call(self, service, method, response):
        return self.channel.unary_unary(
            f"/quotad.v1.{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString)

    def acquire(self, **kw):
        return self._call("Quota", "Acquire", self.pb.AcquireResponse)(
            self.pb.AcquireRequest(**kw), timeout=10)

    def acquire_future(self, timeout, **kw):
        return self._call("Quota", "Acquire", self.pb.AcquireResponse).future(
            self.pb.AcquireRequest(**kw), timeout=timeout)

    def report(self, **kw):
        return self._call("Quota", "Report", self.pb.ReportResponse)(
            self.pb.ReportRequest(**kw), timeout=10)

    def get_usage(self, credential):
        return self._call("Admin", "GetUsage", self.pb.GetUsageResponse)(
            self.pb.GetUsageRequest(credential=credential), timeout=10)

    def close(self):
        self.channel.close()
