"""report() with real requests and httpx responses from a local HTTP server that answers like the
seed providers: VirusTotal's 429 with Retry-After, MetaDefender's 429 body, MediaSilo's 420, and
a 200 whose X-RateLimit-Remaining is lower than quotad believes. Checks both what the client
sends (only the rate-limit headers; the body only for throttles) and what quotad made of it."""

import datetime as dt
import http.server
import json
import threading
import time

import grpc
import httpx
import pytest
import requests

import quotad

MD_BODY = ('{"error": {"code": 429000, "messages": ["Rate limit exceeded, retry after the limit is '
           'reset. Limit: 100 requests / day"]}}')
VT_BODY = '{"error": {"code": "QuotaExceededError", "message": "Quota exceeded"}}'


class FakeProvider(http.server.BaseHTTPRequestHandler):
    """Answers like the seed providers (see /work/shared/seeds)."""

    def do_GET(self):
        if self.path == "/virustotal":
            self.answer(429, VT_BODY, {"Retry-After": "12"})
        elif self.path == "/metadefender":
            self.answer(429, MD_BODY, {"X-RateLimit-For": "reputation_api"})
        elif self.path == "/mediasilo":
            reset = int(time.time()) + 600
            self.answer(420, '{"message": "rate limit exceeded"}',
                        {"X-RateLimit-Reset": str(reset), "X-RateLimit-Limit": "10000",
                         "X-RateLimit-Remaining": "0"})
        elif self.path == "/ok":
            self.answer(200, json.dumps({"data": "x" * 5000}),
                        {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "60"})
        else:
            self.answer(404, "{}", {})

    def answer(self, status, body, headers):
        data = body.encode()
        self.send_response(status, "Enhance Your Calm" if status == 420 else None)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Set-Cookie", "session=secret")  # never sent to quotad
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def upstream():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeProvider)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


class Sent(grpc.UnaryUnaryClientInterceptor):
    """Keeps every ReportRequest the client sends."""

    def __init__(self):
        self.reports = []

    def intercept_unary_unary(self, continuation, details, request):
        if details.method.endswith("/Report"):
            self.reports.append(request)
        return continuation(details, request)


@pytest.fixture
def spied(server):
    sent = Sent()
    c = quotad.QuotaClient(grpc.intercept_channel(grpc.insecure_channel(server.address), sent))
    yield c, sent
    c.close()


def headers_of(req):
    return [(h.name.lower(), h.value) for h in req.headers]


def test_virustotal_429_with_retry_after_via_requests(spied, upstream):
    c, sent = spied
    with requests.Session() as s:
        s.trust_env = False
        r = s.get(upstream + "/virustotal", timeout=5)
    assert r.status_code == 429
    before = dt.datetime.now(dt.timezone.utc)
    result = c.report("virustotal/test", "requests", r)
    assert headers_of(sent.reports[-1]) == [("retry-after", "12")]
    assert sent.reports[-1].body == VT_BODY.encode()
    assert result.cooldown_until is not None
    assert 10 <= (result.cooldown_until - before).total_seconds() <= 14
    denied = c.acquire("virustotal/test", "requests")
    assert not denied.granted
    assert denied.limited_by == "requests.cooldown"
    assert denied.retry_after > 10


def test_metadefender_429_body_via_httpx(spied, upstream):
    c, sent = spied
    with httpx.Client(trust_env=False) as h:
        r = h.get(upstream + "/metadefender", timeout=5)
    assert r.status_code == 429
    result = c.report("metadefender/test", "reputation", r)
    assert headers_of(sent.reports[-1]) == [("x-ratelimit-for", "reputation_api")]
    assert sent.reports[-1].body == MD_BODY.encode()
    assert result.cooldown_until is not None and result.warnings == []
    assert c.acquire("metadefender/test", "reputation").limited_by == "reputation.cooldown"


def test_mediasilo_420_via_requests(spied, upstream):
    c, sent = spied
    with requests.Session() as s:
        s.trust_env = False
        r = s.get(upstream + "/mediasilo", timeout=5)
    assert r.status_code == 420
    result = c.report("mediasilo/test", "requests", r)
    names = sorted(n for n, _ in headers_of(sent.reports[-1]))
    assert names == ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"]
    assert sent.reports[-1].body  # 420 is MediaSilo's throttle: its body goes along
    assert result.cooldown_until is not None
    assert c.acquire("mediasilo/test", "requests").limited_by == "requests.cooldown"


@pytest.mark.asyncio
async def test_lower_remaining_is_adopted_from_a_streamed_httpx_answer(server, upstream):
    # The 200's body is never read: report() needs only its headers.
    async with quotad.AsyncQuotaClient(server.address) as c:
        async with httpx.AsyncClient(trust_env=False) as h:
            async with h.stream("GET", upstream + "/ok", timeout=5) as r:
                result = await c.report("py/report", "requests", r)
        assert result.cooldown_until is None
        assert result.adopted and "40" in result.adopted[0], result.adopted
        assert (await c.usage("py/report")).limits[0].used == 40


def test_tuple_answers_and_the_body_limit(spied):
    c, sent = spied
    big = b"x" * (200 * 1024)
    result = c.report("py/tuple", "requests",
                      (429, [("Retry-After", "5"), ("X-Request-Id", "abc")], big))
    assert headers_of(sent.reports[-1]) == [("retry-after", "5")]
    assert len(sent.reports[-1].body) == 64 * 1024
    assert result.cooldown_until is not None
    c.report("py/tuple", "requests", (200, {"X-RateLimit-Remaining": "oops"}, b"ignored"))
    assert sent.reports[-1].body == b""
    assert headers_of(sent.reports[-1]) == [("x-ratelimit-remaining", "oops")]


def test_bad_header_values_are_warnings_not_errors(client):
    result = client.report("py/tuple", "requests", (200, {"X-RateLimit-Remaining": "lots"}, None))
    assert any("X-RateLimit-Remaining" in w for w in result.warnings), result.warnings


def test_decorator_reports_the_answer_and_releases(server, upstream):
    c = quotad.QuotaClient(server.address)
    session = requests.Session()
    session.trust_env = False

    @c.limited("py/decorated", "calls", wait=5)
    def fetch(path):
        return session.get(upstream + path, timeout=5)

    assert fetch("/nothing").status_code == 404
    assert c.usage("py/decorated").limits[0].used == 1
    assert c.leases("py/decorated") == []
    c.close()


def test_decorator_sends_when_the_request_was_sent(server, upstream):
    sent = Sent()
    c = quotad.QuotaClient(grpc.intercept_channel(grpc.insecure_channel(server.address), sent))
    session = requests.Session()
    session.trust_env = False

    @c.limited("py/decorated", "calls", wait=5)
    def fetch(path):
        return session.get(upstream + path, timeout=5)

    before = dt.datetime.now(dt.timezone.utc)
    fetch("/ok")
    (req,) = sent.reports
    assert req.HasField("sent_at")
    sent_at = req.sent_at.ToDatetime(tzinfo=dt.timezone.utc)
    observed_at = req.observed_at.ToDatetime(tzinfo=dt.timezone.utc)
    assert before - dt.timedelta(milliseconds=1) <= sent_at <= observed_at
    c.close()


def test_sent_after_the_answer_was_seen_is_refused_naming_both(client):
    seen = dt.datetime.now(dt.timezone.utc)
    with pytest.raises(quotad.InvalidArgument) as e:
        client.report("py/tuple", "requests", (200, {}, None), observed_at=seen,
                      sent_at=seen + dt.timedelta(seconds=5))
    assert "sent_at" in str(e.value) and "after observed_at" in str(e.value)
