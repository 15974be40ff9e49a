#!/usr/bin/python3
"""Helpers of tests/k8s/smoke.sh.

  smoke.py pod RENDERED.yaml OUT.yaml --port N --volume NAME
      Turns the rendered embedded overlay into what `podman kube play` runs: the ConfigMap,
      the StatefulSet's pod template as Pod quotad-0 on the host network listening on
      127.0.0.1:N, and its volumeClaimTemplate as a PersistentVolumeClaim (a podman volume).
      Service, PodDisruptionBudget, NetworkPolicy and Namespace have no podman equivalent.
  smoke.py check --port N [--timeout S]
      Waits for grpc.health.v1.Health/Check to answer SERVING, then calls
      quotad.v1.Quota/Acquire for virustotal/prod "requests" and expects a grant.
"""

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time

import yaml


def make_pod(args):
    docs = [d for d in yaml.safe_load_all(open(args.rendered)) if d]
    out = []
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    for d in docs:
        if d["kind"] == "ConfigMap":
            d["metadata"].pop("namespace", None)
            out.append(d)
    claims = {}
    for t in sts["spec"].get("volumeClaimTemplates", []):
        claims[t["metadata"]["name"]] = args.volume
        out.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": args.volume}, "spec": copy.deepcopy(t["spec"])})
    tmpl = sts["spec"]["template"]
    spec = copy.deepcopy(tmpl["spec"])
    spec["hostNetwork"] = True
    spec["volumes"] = spec.get("volumes", []) + [
        {"name": n, "persistentVolumeClaim": {"claimName": v}} for n, v in claims.items()]
    for c in spec["containers"]:
        c["args"] = [a for a in c.get("args", []) if not a.startswith("--listen=")]
        c["args"].append(f"--listen=127.0.0.1:{args.port}")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            # podman 4.3 turns exec/http/tcp probes into healthchecks and has no gRPC probe:
            # the health check below does what the kubelet's gRPC probe would.
            c.pop(probe, None)
        c.pop("ports", None)  # host network: nothing to publish
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{sts['metadata']['name']}-0",
                        "labels": tmpl["metadata"].get("labels", {})},
           "spec": spec}
    out.append(pod)
    with open(args.out, "w") as f:
        yaml.safe_dump_all(out, f, sort_keys=False)


def check(args):
    import grpc
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    gen = tempfile.mkdtemp(prefix="quotad_smoke_pb_")
    subprocess.run(["protoc", f"-I{root}/proto", f"--python_out={gen}",
                    "quotad/v1/quotad.proto", "quotad/v1/config.proto"], check=True)
    sys.path.insert(0, gen)
    from quotad.v1 import quotad_pb2  # noqa: E402

    channel = grpc.insecure_channel(f"127.0.0.1:{args.port}")
    # grpc.health.v1.HealthCheckRequest{service: ""} is empty; the response's field 1 is the
    # status varint, SERVING = 1 (encoded 08 01).
    health = channel.unary_unary("/grpc.health.v1.Health/Check",
                                 request_serializer=lambda b: b, response_deserializer=lambda b: b)
    deadline = time.monotonic() + args.timeout
    last = None
    while True:
        try:
            resp = health(b"", timeout=2)
            if resp == b"\x08\x01":
                print("smoke: grpc.health.v1.Health/Check -> SERVING")
                break
            last = f"status bytes {resp.hex()}"
        except grpc.RpcError as e:
            last = f"{e.code().name}: {e.details()}"
        if time.monotonic() > deadline:
            print(f"smoke: health never SERVING within {args.timeout}s (last: {last})")
            return 1
        time.sleep(0.5)

    acquire = channel.unary_unary("/quotad.v1.Quota/Acquire",
                                  request_serializer=quotad_pb2.AcquireRequest.SerializeToString,
                                  response_deserializer=quotad_pb2.AcquireResponse.FromString)
    resp = acquire(quotad_pb2.AcquireRequest(credential="virustotal/prod", feature="requests"),
                   timeout=5)
    print(f"smoke: quotad.v1.Quota/Acquire virustotal/prod requests -> granted={resp.granted}"
          f" lease_id={resp.lease_id!r} limited_by={resp.limited_by!r}")
    return 0 if resp.granted else 1


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pod")
    a.add_argument("rendered")
    a.add_argument("out")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--volume", required=True)
    b = sub.add_parser("check")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--timeout", type=float, default=30)
    args = p.parse_args()
    if args.cmd == "pod":
        make_pod(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
