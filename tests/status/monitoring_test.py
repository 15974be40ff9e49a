#!/usr/bin/python3
"""k8s/monitoring/ against promtool and a real quotad.

  - promtool check rules on quotad-rules.yaml and on the PrometheusRule's spec, which must hold
    the same groups;
  - promtool test rules on rules_test.yaml (series shaped like quotad's metrics);
  - a real quotad (loopback, port 0) is scraped after an Acquire, a denial and a throttle Report,
    and every quotad_* metric named in the rules' and the dashboard's queries must be exported
    (histograms through their _bucket/_sum/_count series), with the labels the queries group or
    filter by.

Exit 0 on success, 1 on failure; a missing promtool fails (.ci/deps installs prometheus).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quotad_proc import Client, Quotad  # noqa: E402

ARGS = None
# Series Prometheus makes itself, not quotad.
NOT_QUOTAD = {"up"}


def promtool(*args):
    binary = shutil.which("promtool")
    if binary is None:
        raise AssertionError("promtool is not installed (bash .ci/deps installs prometheus)")
    r = subprocess.run([binary, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=60)
    return r.returncode, r.stdout.decode()


def rule_exprs(groups):
    return [r["expr"] for g in groups for r in g["rules"]]


def dashboard_exprs(dashboard):
    out = []
    for p in dashboard["panels"]:
        out += [t["expr"] for t in p.get("targets", [])]
    for v in dashboard.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and q:
            out.append(q)
    return out


def metric_names(expr):
    # Identifiers followed by a selector, a range, a space or the end; label names inside
    # {...} and by (...) are not metric names.
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b", expr))
    return {n for n in names if n.startswith("quotad_") or n in NOT_QUOTAD}


def label_names(expr):
    """Label names a query groups by or filters on, per metric they apply to (best effort)."""
    labels = set()
    for m in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {l.strip() for l in m.group(1).split(",") if l.strip()}
    for m in re.finditer(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(1)))
    for m in re.finditer(r"label_values\(\s*[a-z_]+\s*,\s*([a-z_]+)\s*\)", expr):
        labels.add(m.group(1))
    return labels - {"le", "job", "instance"}


class MonitoringTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(os.path.join(ARGS.monitoring, "quotad-rules.yaml")) as f:
            cls.rules = yaml.safe_load(f)
        with open(os.path.join(ARGS.monitoring, "prometheusrule.yaml")) as f:
            cls.prometheus_rule = yaml.safe_load(f)
        with open(os.path.join(ARGS.monitoring, "quotad-dashboard.json")) as f:
            cls.dashboard = json.load(f)

    def test_rules_file_passes_promtool_check(self):
        code, out = promtool("check", "rules", os.path.join(ARGS.monitoring, "quotad-rules.yaml"))
        self.assertEqual(code, 0, out)

    def test_prometheus_rule_holds_the_same_checked_groups(self):
        pr = self.prometheus_rule
        self.assertEqual(pr["apiVersion"], "monitoring.coreos.com/v1")
        self.assertEqual(pr["kind"], "PrometheusRule")
        self.assertEqual(pr["spec"]["groups"], self.rules["groups"])
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(pr["spec"], f)
            f.flush()
            code, out = promtool("check", "rules", f.name)
        self.assertEqual(code, 0, out)

    def test_rules_unit_tests_pass(self):
        code, out = promtool("test", "rules", ARGS.rules_test)
        self.assertEqual(code, 0, out)
        self.assertIn("SUCCESS", out)

    def test_every_alert_the_issue_asks_for_exists(self):
        alerts = {r["alert"] for g in self.rules["groups"] for r in g["rules"]}
        self.assertLessEqual({"QuotadKeyNearlyExhausted", "QuotadUpstreamThrottled",
                              "QuotadCooldownActive", "QuotadStoreErrors", "QuotadNotServing",
                              "QuotadWaitersPilingUp"}, alerts)

    def test_quotad_exports_every_metric_and_label_the_queries_name(self):
        q = Quotad(ARGS.quotad, ARGS.config)
        try:
            c = Client(q.address, ARGS.stubs)
            for _ in range(11):  # 10 granted, 1 denied by requests.per_minute
                c.acquire(credential="demo/prod", feature="requests")
            c.acquire(credential="demo/prod", feature="jobs", holder="w1")
            c.acquire(credential="demo/prod", feature="jobs", holder="w2")
            # Both slots held: this one waits 200 ms in the queue, then is denied.
            waited = c.acquire_future(10, credential="demo/prod", feature="jobs", holder="w3",
                                      max_wait={"nanos": 200000000}).result()
            self.assertFalse(waited.granted)
            with self.assertRaises(c.grpc.RpcError):  # NOT_FOUND: a request error
                c.acquire(credential="nobody/none", feature="requests")
            c.report(credential="demo/prod", feature="requests", http_status=429,
                     headers=[c.pb.Header(name="Retry-After", value="60")])
            c.close()
            # Gauges are refreshed every 100 ms (--metrics_refresh); wait for the cooldown.
            import time
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                status, _, text = q.get("/metrics")
                if "quotad_cooldown_active{" in text:
                    break
                time.sleep(0.1)
        finally:
            q.stop()
        self.assertEqual(status, 200)
        families = set(re.findall(r"^# TYPE (\S+) \S+$", text, re.M))
        samples = {}
        for name, labels in re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? ", text, re.M):
            samples.setdefault(name, set()).update(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', labels))

        exprs = rule_exprs(self.rules["groups"]) + dashboard_exprs(self.dashboard)
        self.assertGreater(len(exprs), 15)
        checked = set()
        for expr in exprs:
            for name in metric_names(expr) - NOT_QUOTAD:
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                self.assertTrue(name in families or (base != name and base in families),
                                f"{name} (in {expr!r}) is not exported by quotad")
                checked.add(name)
                have = samples.get(name)
                if have is None:
                    continue  # a counter no event of this run created (store errors)
                missing = label_names(expr) - have
                # A query may mix metrics: only labels none of its metrics has are an error.
                others = set().union(*(samples.get(n, set()) for n in metric_names(expr)))
                self.assertFalse(missing - others,
                                 f"labels {missing - others} of {expr!r} not on {name}: {have}")
        self.assertGreaterEqual(len(checked), 12, checked)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quotad", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--stubs", required=True)
    p.add_argument("--monitoring", required=True)
    p.add_argument("--rules_test", required=True)
    ARGS, rest = p.parse_known_args()
    unittest.main(argv=[sys.argv[0], "-v", *rest])
