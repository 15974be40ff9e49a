"""Errors map to their QuotaError subclasses (and denials never raise); TLS and bearer tokens."""

import hashlib
import os
import socket
import subprocess

import pytest

import quotad
from conftest import CONFIG, Quotad, write_config

TOKEN_SCANNER = "scanner-token-0123456789"
TOKEN_NOBODY = "nobody-token-0123456789"
TOKEN_OPS = "ops-token-0123456789"


def sha(t):
    return hashlib.sha256(t.encode()).hexdigest()


AUTH = f"""
auth:
  tokens:
    - {{identity: scanner, sha256: {sha(TOKEN_SCANNER)}}}
    - {{identity: nobody, sha256: {sha(TOKEN_NOBODY)}}}
    - {{identity: ops, sha256: {sha(TOKEN_OPS)}}}
  rules:
    - identity: scanner
      credentials: ["py/*"]
      methods: ["*"]
  admins: [ops]
"""


def test_errors_map_to_their_classes(client):
    cases = [
        (lambda: client.acquire("py/errors", "calls", cost=0), quotad.InvalidArgument),
        (lambda: client.acquire("bad name!", "calls"), quotad.InvalidArgument),
        (lambda: client.acquire("py/errors", "calls", cost=101), quotad.InvalidArgument),
        (lambda: client.acquire("py/nope", "calls"), quotad.NotFound),
        (lambda: client.acquire("py/errors", "nope"), quotad.NotFound),
        (lambda: client.release_lease("0" * 32), quotad.NotFound),
        (lambda: client.release_lease("not-a-lease"), quotad.InvalidArgument),
        (lambda: client.usage("py/nope"), quotad.NotFound),
    ]
    for call, cls in cases:
        with pytest.raises(cls) as info:
            call()
        assert isinstance(info.value, quotad.QuotaError)
        assert info.value.code == cls.code
        assert info.value.details, "quotad names the field and the value"


def test_resource_exhausted_is_retried_then_raised(server):
    c = quotad.QuotaClient(server.address, retry=quotad.RetryPolicy(max_attempts=2,
                                                                    initial_backoff=0.01))
    assert c.acquire("py/errors", "scoped", scope="a").granted
    with pytest.raises(quotad.ResourceExhausted):
        c.acquire("py/errors", "scoped", scope="b")  # max_scopes: 1
    c.close()


def test_unreachable_quotad_is_unavailable_after_the_retries():
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A refused connection fails at once; the generous deadline only keeps a loaded machine from
    # turning it into DEADLINE_EXCEEDED.
    c = quotad.QuotaClient(f"127.0.0.1:{port}", call_timeout=10,
                           retry=quotad.RetryPolicy(max_attempts=3, initial_backoff=0.01))
    with pytest.raises(quotad.Unavailable) as info:
        c.acquire("py/errors", "calls")
    assert info.value.attempts == 3
    c.close()


def test_a_missed_deadline_is_deadline_exceeded():
    # A listener that never answers: the kernel completes the TCP handshake from the backlog and
    # nobody sends HTTP/2's settings, so the call waits out its deadline whatever the machine's
    # speed (a 1 us deadline is rounded up to gRPC's millisecond and a loopback call can beat it).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        c = quotad.QuotaClient(f"127.0.0.1:{s.getsockname()[1]}", call_timeout=0.2,
                               retry=quotad.RetryPolicy(max_attempts=1))
        with pytest.raises(quotad.DeadlineExceeded):
            c.acquire("py/errors", "calls")
        c.close()


def test_token_over_plaintext_needs_consent():
    with pytest.raises(ValueError):
        quotad.QuotaClient("127.0.0.1:1", token="t")


def test_tokens_map_to_unauthenticated_and_permission_denied(tmp_path):
    q = Quotad(write_config(str(tmp_path), CONFIG + AUTH))
    try:
        anonymous = quotad.QuotaClient(q.address)
        with pytest.raises(quotad.Unauthenticated):
            anonymous.acquire("py/errors", "calls")
        wrong = quotad.QuotaClient(q.address, token="wrong", insecure_token=True)
        with pytest.raises(quotad.Unauthenticated):
            wrong.acquire("py/errors", "calls")
        nobody = quotad.QuotaClient(q.address, token=TOKEN_NOBODY, insecure_token=True)
        with pytest.raises(quotad.PermissionDenied):
            nobody.acquire("py/errors", "calls")
        scanner = quotad.QuotaClient(q.address, token=TOKEN_SCANNER, insecure_token=True)
        with scanner.acquire("py/errors", "calls") as lease:
            assert lease.granted
            with pytest.raises(quotad.PermissionDenied):
                scanner.acquire("virustotal/test", "requests")
            with pytest.raises(quotad.PermissionDenied):
                scanner.usage("py/errors")  # Admin is for admins
        for c in (anonymous, wrong, nobody, scanner):
            c.close()
    finally:
        q.stop()


def test_tls_with_a_bearer_token(tmp_path):
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    q = Quotad(write_config(str(tmp_path), CONFIG + AUTH),
               args=[f"--tls_cert={cert}", f"--tls_key={key}"])
    try:
        c = quotad.QuotaClient(q.address, tls=True, root_certificates=cert, token=TOKEN_SCANNER)
        with c.acquire("py/errors", "calls") as lease:
            assert lease.granted
        c.close()
        ops = quotad.QuotaClient(q.address, tls=True, root_certificates=cert, token=TOKEN_OPS)
        assert ops.usage("py/errors").credential == "py/errors"
        ops.close()
        plaintext = quotad.QuotaClient(q.address, token=TOKEN_SCANNER, insecure_token=True,
                                       call_timeout=10,
                                       retry=quotad.RetryPolicy(max_attempts=1))
        with pytest.raises(quotad.Unavailable):
            plaintext.acquire("py/errors", "calls")
        plaintext.close()
    finally:
        q.stop()


def test_cli_mirrors_quotactl(server):
    import json
    import sys
    env = dict(os.environ)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "quotad", f"--server={server.address}",
                               *args], capture_output=True, text=True, timeout=30, env=env)

    got = cli("acquire", "py/kill", "jobs", "--ttl=5s")
    assert got.returncode == 0, got.stderr
    lease_id = got.stdout.strip()
    assert len(lease_id) == 32
    denied = cli("acquire", "py/kill", "jobs")
    assert denied.returncode == 1 and "limited_by=jobs.concurrent" in denied.stdout
    leases = cli("--json", "leases", "py/kill")
    assert json.loads(leases.stdout)[0]["lease_id"] == lease_id
    usage = cli("usage", "py/kill")
    assert usage.returncode == 0 and "jobs.concurrent" in usage.stdout
    assert cli("release", lease_id).returncode == 0
    bad = cli("usage", "py/nope")
    assert bad.returncode == 2 and "NOT_FOUND" in bad.stderr
