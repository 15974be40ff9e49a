"""Retries under one request_id against the real quotad: an answer lost after quotad charged is
retried with the same id and charged once, also when quotad restarts on a SQLite --state file
between the attempts."""

import os
import threading

import grpc

import quotad
from conftest import Quotad, eventually


class _Dropped(grpc.RpcError):
    """What the client sees when an answer is lost on the way back."""

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "answer dropped by the test"

    def result(self, timeout=None):
        raise self

    def exception(self, timeout=None):
        return self


class AttemptLog(grpc.UnaryUnaryClientInterceptor):
    """Records the request_id of every Acquire attempt and loses the first answer."""

    def __init__(self, on_lost_answer=None):
        self.lock = threading.Lock()
        self.ids = []
        self.failures = 0
        self.lose_next_answer = True
        self.on_lost_answer = on_lost_answer

    def intercept_unary_unary(self, continuation, details, request):
        if not details.method.endswith("/Acquire"):
            return continuation(details, request)
        with self.lock:
            self.ids.append(request.request_id)
        outcome = continuation(details, request)
        if outcome.code() != grpc.StatusCode.OK:
            with self.lock:
                self.failures += 1
            return outcome
        with self.lock:
            lose, self.lose_next_answer = self.lose_next_answer, False
        if lose:
            if self.on_lost_answer:
                self.on_lost_answer()
            return _Dropped()
        return outcome


def used(client, credential):
    return client.usage(credential).limits[0].used


def test_retried_acquire_with_a_lost_answer_is_charged_once(server, client):
    log = AttemptLog()
    c = quotad.QuotaClient(grpc.intercept_channel(grpc.insecure_channel(server.address), log))
    lease = c.acquire("py/dedup", "calls", cost=5)
    assert lease.granted
    assert len(log.ids) == 2
    assert log.ids[0] == log.ids[1] == lease.request_id, "the retry must carry the same request_id"
    assert len(lease.request_id) == 32
    assert used(client, "py/dedup") == 5, "the retried acquire was charged twice"
    lease.commit(5)


def test_retries_around_a_server_restart_do_not_double_charge(config_path, tmp_path):
    state = str(tmp_path / "quotad.db")
    q = Quotad(config_path, state=state)
    port = q.port
    restarted = threading.Event()
    threads = []

    def restart():
        # Let a few retries meet the closed port before quotad is back on the same one.
        eventually(lambda: log.failures >= 3, timeout=20)
        q.start(port)
        restarted.set()

    def on_lost_answer():
        q.stop()  # SIGTERM: quotad drains and exits; its state file keeps the charge and the id
        t = threading.Thread(target=restart, daemon=True)
        threads.append(t)
        t.start()

    log = AttemptLog(on_lost_answer)
    fast = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 200)]
    retry = quotad.RetryPolicy(max_attempts=100, initial_backoff=0.02, max_backoff=0.2)
    c = quotad.QuotaClient(grpc.intercept_channel(
        grpc.insecure_channel(q.address, options=fast), log), retry=retry)
    plain = quotad.QuotaClient(q.address)
    try:
        # A control credential charged once the plain way: quotad restores durable state
        # conservatively (reserved blocks count as used), so after the restart the retried
        # credential must look exactly like the control, not like two charges.
        control = plain.acquire("py/restart_control", "calls", cost=5)
        assert control.granted
        lease = c.acquire("py/restart", "calls", cost=5)
        for t in threads:
            t.join(30)
        assert restarted.is_set(), "quotad was never restarted"
        assert lease.granted
        assert len(log.ids) >= 3 and log.failures >= 3
        assert set(log.ids) == {lease.request_id}, "a retry changed its request_id"
        after = quotad.QuotaClient(q.address)
        restart_used = used(after, "py/restart")
        assert 5 <= restart_used < 10, "the retried acquire was charged twice"
        assert restart_used == used(after, "py/restart_control"), q.text()
        lease.commit(5)
        after.close()
    finally:
        c.close()
        plain.close()
        q.stop()
    assert os.path.getsize(state) > 0
