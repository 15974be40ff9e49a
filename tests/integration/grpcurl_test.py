#!/usr/bin/python3
"""What grpcurl does against quotad, through server reflection only.

  grpcurl -plaintext ADDR list
  grpcurl -plaintext ADDR describe grpc.health.v1.Health
  grpcurl -plaintext -d '{"credential": ...}' ADDR quotad.v1.Quota/Acquire
  grpcurl -plaintext -d '{"credential": ..., "maxWait": "5s"}' ADDR quotad.v1.Quota/Acquire
  grpcurl -plaintext -d '{"items": [{"credential": ...}, ...]}' ADDR quotad.v1.Quota/AcquireBatch
  grpcurl -plaintext -d '{"allOrNothing": true, "items": [...]}' ADDR quotad.v1.Quota/AcquireBatch
  grpcurl -plaintext -d '{"decisionsOnly": true, "items": [...]}' ADDR quotad.v1.Quota/AcquireBatch
  grpcurl -plaintext -d '{"credential": ..., "httpStatus": 429, "headers": [...]}' \
      ADDR quotad.v1.Quota/Report

Starts the real quotad binary on port 0, resolves every descriptor through the reflection
service (no quotad stubs are compiled in), builds requests from JSON with json_format and calls.
Exit 0 on success, 1 on failure, 77 (skipped) when grpcio is not installed.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest

try:
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}", file=sys.stderr)
    sys.exit(77)

ARGS = None


def start_quotad():
    log = tempfile.NamedTemporaryFile(prefix="grpcurl_test_", suffix=".log", delete=False)
    proc = subprocess.Popen([ARGS.quotad, f"--config={ARGS.config}", "--listen=127.0.0.1:0",
                             "--memory_only"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = open(log.name).read()
        m = re.search(r"listening address=(\S+)", text)
        if m:
            return proc, m.group(1), log.name
        if proc.poll() is not None:
            raise RuntimeError(f"quotad exited with {proc.returncode}:\n{text}")
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError("quotad did not log its address")


class Reflection:
    """A minimal grpcurl: reflection requests and dynamic messages."""

    def __init__(self, channel):
        from grpc.reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
        self._pb2 = reflection_pb2
        self._stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        self._channel = channel
        self.pool = descriptor_pool.DescriptorPool()
        self._loaded = set()

    def _ask(self, **kwargs):
        req = self._pb2.ServerReflectionRequest(**kwargs)
        resp = next(iter(self._stub.ServerReflectionInfo(iter([req]), timeout=10)))
        if resp.HasField("error_response"):
            raise LookupError(resp.error_response.error_message)
        return resp

    def list_services(self):
        resp = self._ask(list_services="")
        return sorted(s.name for s in resp.list_services_response.service)

    def _add_files(self, serialized_files):
        protos = {}
        for raw in serialized_files:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            protos[fd.name] = fd
        # Fetch dependencies the server did not send, then add in dependency order.
        for fd in list(protos.values()):
            for dep in fd.dependency:
                if dep not in protos and dep not in self._loaded:
                    resp = self._ask(file_by_filename=dep)
                    self._add_files(resp.file_descriptor_response.file_descriptor_proto)
        def add(name):
            if name in self._loaded or name not in protos:
                return
            for dep in protos[name].dependency:
                add(dep)
            self.pool.Add(protos[name])
            self._loaded.add(name)
        for name in protos:
            add(name)

    def describe(self, symbol):
        try:
            return self.pool.FindServiceByName(symbol)
        except KeyError:
            resp = self._ask(file_containing_symbol=symbol)
            self._add_files(resp.file_descriptor_response.file_descriptor_proto)
            return self.pool.FindServiceByName(symbol)

    def call_json(self, full_method, request_json):
        service_name, method_name = full_method.split("/")
        method = self.describe(service_name).methods_by_name[method_name]
        factory = message_factory.MessageFactory(self.pool)
        req_cls = factory.GetPrototype(method.input_type)
        resp_cls = factory.GetPrototype(method.output_type)
        request = json_format.Parse(request_json, req_cls())
        call = self._channel.unary_unary(f"/{service_name}/{method_name}",
                                         request_serializer=req_cls.SerializeToString,
                                         response_deserializer=resp_cls.FromString)
        return json_format.MessageToDict(call(request, timeout=10))


class GrpcurlTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.proc, cls.addr, cls.log = start_quotad()
        cls.channel = grpc.insecure_channel(cls.addr)
        cls.refl = Reflection(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.proc.send_signal(signal.SIGTERM)
        try:
            code = cls.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            cls.proc.kill()
            raise
        os.unlink(cls.log)
        assert code == 0, f"quotad exited with {code} after SIGTERM"

    def test_list(self):
        services = self.refl.list_services()
        for s in ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                  "quotad.v1.Admin", "quotad.v1.Quota"]:
            self.assertIn(s, services)

    def test_describe_health(self):
        health = self.refl.describe("grpc.health.v1.Health")
        self.assertEqual(sorted(health.methods_by_name), ["Check", "Watch"])
        check = health.methods_by_name["Check"]
        self.assertEqual(check.input_type.full_name, "grpc.health.v1.HealthCheckRequest")
        self.assertEqual(check.output_type.full_name, "grpc.health.v1.HealthCheckResponse")
        self.assertEqual(self.refl.call_json("grpc.health.v1.Health/Check", "{}"),
                         {"status": "SERVING"})

    def test_describe_quota_and_admin(self):
        quota = self.refl.describe("quotad.v1.Quota")
        self.assertEqual(sorted(quota.methods_by_name),
                         ["Acquire", "AcquireBatch", "Release", "ReleaseBatch", "Renew",
                          "Report"])
        batch = quota.methods_by_name["AcquireBatch"]
        self.assertEqual(batch.input_type.full_name, "quotad.v1.AcquireBatchRequest")
        self.assertEqual(batch.output_type.full_name, "quotad.v1.AcquireBatchResponse")
        report = quota.methods_by_name["Report"]
        self.assertEqual(report.input_type.full_name, "quotad.v1.ReportRequest")
        self.assertEqual(report.output_type.full_name, "quotad.v1.ReportResponse")
        admin = self.refl.describe("quotad.v1.Admin")
        self.assertEqual(sorted(admin.methods_by_name),
                         ["GetUsage", "ListCredentials", "ListLeases", "ReloadConfig",
                          "ResetCredential"])

    def test_acquire_from_json(self):
        resp = self.refl.call_json(
            "quotad.v1.Quota/Acquire",
            '{"credential": "virustotal/prod", "feature": "requests", "holder": "grpcurl",'
            ' "leaseTtl": "30s"}')
        self.assertTrue(resp["granted"], resp)
        self.assertRegex(resp["leaseId"], r"^[0-9a-f]{32}$")
        self.assertIn("leaseExpiresAt", resp)
        names = [l["name"] for l in resp["limits"]]
        self.assertIn("requests.per_day", names)
        leases = self.refl.call_json("quotad.v1.Admin/ListLeases",
                                     '{"credential": "virustotal/prod"}')
        self.assertIn(resp["leaseId"], [l["leaseId"] for l in leases["leases"]])
        released = self.refl.call_json("quotad.v1.Quota/Release",
                                       '{"leaseId": "%s", "used": 1}' % resp["leaseId"])
        self.assertEqual(released.get("refunded", "0"), "0")

    def test_readme_tour_calls(self):
        # The README's tour, in the JSON grpcurl sends (with the test config's credential).
        self.assertEqual(self.refl.call_json("grpc.health.v1.Health/Check", '{"service":""}'),
                         {"status": "SERVING"})
        self.refl.call_json("quotad.v1.Quota/Acquire",
                            '{"credential":"virustotal/prod","feature":"requests"}')
        usage = self.refl.call_json("quotad.v1.Admin/GetUsage",
                                    '{"credential":"virustotal/prod"}')
        names = [l["name"] for l in usage["limits"]]
        self.assertIn("requests.per_minute", names, usage)
        self.assertIn("leases", self.refl.call_json("quotad.v1.Admin/ListLeases", "{}"))
        creds = self.refl.call_json("quotad.v1.Admin/ListCredentials", "{}")
        self.assertIn("virustotal/prod", str(creds))

    def test_acquire_with_max_wait_from_json(self):
        # The only slot of test/short is held by a lease of 1 s; a call with maxWait waits for
        # its expiry and is granted then, on the same call.
        first = self.refl.call_json(
            "quotad.v1.Quota/Acquire", '{"credential": "test/short", "feature": "jobs"}')
        self.assertTrue(first["granted"], first)
        began = time.monotonic()
        waited = self.refl.call_json(
            "quotad.v1.Quota/Acquire",
            '{"credential": "test/short", "feature": "jobs", "maxWait": "5s", "priority": 1}')
        self.assertTrue(waited["granted"], waited)
        self.assertNotEqual(waited["leaseId"], first["leaseId"])
        self.assertLess(time.monotonic() - began, 4.5)

    def test_report_from_json(self):
        # Exactly what grpcurl sends: enum-free JSON, camelCase names, a repeated Header.
        resp = self.refl.call_json(
            "quotad.v1.Quota/Report",
            '{"credential": "test/race", "feature": "calls", "httpStatus": 429,'
            ' "headers": [{"name": "Retry-After", "value": "12"}]}')
        self.assertIn("cooldownUntil", resp, resp)
        denied = self.refl.call_json(
            "quotad.v1.Quota/Acquire", '{"credential": "test/race", "feature": "calls"}')
        self.assertFalse(denied.get("granted", False), denied)
        self.assertEqual(denied["limitedBy"], "calls.cooldown")
        with self.assertRaises(grpc.RpcError) as ctx:
            self.refl.call_json("quotad.v1.Quota/Report",
                                '{"credential": "test/race", "feature": "calls",'
                                ' "httpStatus": 999}')
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("http_status 999", ctx.exception.details())

    def test_acquire_batch_from_json(self):
        # Exactly what is left is granted across the batch, never more; retries of a request_id
        # inside the batch get the first lease; bad items are answered with their own error.
        usage = self.refl.call_json("quotad.v1.Admin/GetUsage",
                                    '{"credential": "virustotal/prod"}')
        left = min(int(l.get("remaining", "0")) for l in usage["limits"]
                   if l["name"].startswith("requests.") and l.get("capacity"))
        items = ['{"credential": "virustotal/prod", "feature": "requests", "holder": "batch"}'
                 for _ in range(left + 2)]
        items += ['{"credential": "virustotal/prod", "feature": "nope"}',
                  '{"credential": "virustotal/prod", "feature": "requests", "maxWait": "5s"}']
        resp = self.refl.call_json("quotad.v1.Quota/AcquireBatch",
                                   '{"items": [%s]}' % ", ".join(items))
        results = resp["results"]
        self.assertEqual(len(results), left + 4)
        granted = [r["response"]["leaseId"] for r in results[:left + 2]
                   if r["response"].get("granted")]
        self.assertEqual(len(granted), left, results)
        self.assertEqual(results[left + 1]["response"]["limitedBy"][:9], "requests.")
        self.assertEqual(results[left + 2]["error"]["code"], 5)  # NOT_FOUND
        self.assertIn("items[%d]" % (left + 2), results[left + 2]["error"]["message"])
        self.assertIn("nope", results[left + 2]["error"]["message"])
        self.assertEqual(results[left + 3]["error"]["code"], 3)  # INVALID_ARGUMENT
        self.assertIn("max_wait", results[left + 3]["error"]["message"])

        # Given back whole: the same capacity is left as before.
        released = self.refl.call_json(
            "quotad.v1.Quota/ReleaseBatch",
            '{"items": [%s]}' % ", ".join('{"leaseId": "%s", "used": 0}' % g for g in granted))
        self.assertEqual(len(released["results"]), left)
        for r in released["results"]:
            self.assertIn("response", r, r)
        with self.assertRaises(grpc.RpcError) as ctx:
            self.refl.call_json("quotad.v1.Quota/ReleaseBatch",
                                '{"items": [%s]}' % ", ".join(['{"leaseId": "x"}'] * 1001))
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("at most 1000", ctx.exception.details())

    def test_acquire_batch_all_or_nothing_from_json(self):
        # The README's call: both keys or neither.
        resp = self.refl.call_json(
            "quotad.v1.Quota/AcquireBatch",
            '{"allOrNothing":true,"items":[{"credential":"virustotal/prod","feature":"requests"},'
            '{"credential":"metadefender/prod","feature":"reputation"}]}')
        results = resp["results"]
        self.assertEqual(len(results), 2)
        leases = [r["response"]["leaseId"] for r in results
                  if r.get("response", {}).get("granted")]
        self.assertEqual(len(leases), 2, results)
        self.refl.call_json(
            "quotad.v1.Quota/ReleaseBatch",
            '{"items": [%s]}' % ", ".join('{"leaseId": "%s", "used": 0}' % g for g in leases))
        # An item that cannot be granted refuses the other, which is denied in its name.
        resp = self.refl.call_json(
            "quotad.v1.Quota/AcquireBatch",
            '{"allOrNothing":true,"items":[{"credential":"virustotal/prod","feature":"requests"},'
            '{"credential":"metadefender/prod","feature":"nope"}]}')
        results = resp["results"]
        self.assertEqual(results[1]["error"]["code"], 5)  # NOT_FOUND
        self.assertIn("items[1]", results[1]["error"]["message"])
        self.assertFalse(results[0]["response"].get("granted", False))
        self.assertEqual(results[0]["response"]["limitedBy"], "all_or_nothing:items[1]")

    def test_acquire_batch_decisions_only_from_json(self):
        # The README's call: the same decisions as without it, and no limits.
        call = ('{"decisionsOnly":true,"items":[{"credential":"virustotal/prod","feature":"requests"},'
                '{"credential":"virustotal/prod","feature":"requests"}]}')
        resp = self.refl.call_json("quotad.v1.Quota/AcquireBatch", call)
        with_limits = self.refl.call_json("quotad.v1.Quota/AcquireBatch",
                                          call.replace('"decisionsOnly":true,', ''))
        answers = [r["response"] for r in resp["results"] + with_limits["results"]]
        self.assertEqual(len(answers), 4)
        for a in answers[:2]:
            self.assertNotIn("limits", a, a)
        for a in answers[2:]:
            self.assertIn("limits", a, a)
        leases = [a["leaseId"] for a in answers if a.get("granted")]
        self.assertGreater(len(leases), 0, answers)
        self.refl.call_json(
            "quotad.v1.Quota/ReleaseBatch",
            '{"items": [%s]}' % ", ".join('{"leaseId": "%s", "used": 0}' % g for g in leases))

    def test_invalid_argument_over_json(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.refl.call_json("quotad.v1.Quota/Acquire",
                                '{"credential": "virustotal/prod", "feature": "requests",'
                                ' "cost": "-2"}')
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("cost must be positive, got -2", ctx.exception.details())


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--quotad", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--stubs", required=True, help="directory with grpc/reflection stubs")
    ARGS, rest = parser.parse_known_args()
    sys.path.insert(0, ARGS.stubs)
    # The generated stubs live in the grpc.reflection namespace of the stubs directory; the
    # installed grpc package owns "grpc", so extend its path.
    grpc.__path__.append(os.path.join(ARGS.stubs, "grpc"))
    result = unittest.main(argv=[sys.argv[0]] + rest, exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
