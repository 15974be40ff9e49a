#!/usr/bin/python3
"""Helpers of tests/k8s/smoke.sh (embedded overlay) and tests/k8s/smoke_shared.sh (shared).

  smoke.py pod RENDERED.yaml OUT.yaml --port N --volume NAME
      Turns the rendered embedded overlay into what `podman kube play` runs: the ConfigMap,
      the StatefulSet's pod template as Pod quotad-0 on the host network listening on
      127.0.0.1:N, and its volumeClaimTemplate as a PersistentVolumeClaim (a podman volume).
      Service, PodDisruptionBudget, NetworkPolicy and Namespace have no podman equivalent.
  smoke.py shared RENDERED.yaml OUT.yaml --redis-ports P0,P1 --sentinel-port S
          --quotad-ports G0:M0,G1:M1 --volume-prefix NAME
      Turns the rendered shared overlay into what tests/k8s/smoke_shared.sh plays: the
      ConfigMaps (a copy per pod, see own_configmaps); Pods redis-0 (the initial primary) and redis-1 (its replica) from the
      StatefulSet redis, redis-sentinel-0 (one sentinel, quorum 1) from the StatefulSet
      redis-sentinel, all on the host network on 127.0.0.1 with the ports given (the start
      scripts' environment names them instead of the pods' DNS names); Pods quotad-0 and
      quotad-1 from the Deployment quotad with its arguments, but listening on 127.0.0.1:Gi
      (metrics on Mi) and pointed at the sentinel on 127.0.0.1:S. Every emptyDir and volume
      claim becomes a podman volume NAME-<pod>-<volume> (one a line on stdout), which the
      caller creates and gives to uid 65532, as the kubelet's fsGroup would.
  smoke.py check --port N [--timeout S] [--lease-on-redis PORT,...]
      Waits for grpc.health.v1.Health/Check to answer SERVING, then calls
      quotad.v1.Quota/Acquire for virustotal/prod "requests" and expects a grant; with
      --lease-on-redis, also that each of those redis-servers holds the grant's lease
      locator (q:lease:<id>): the decision was made in that shared Redis.
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


def loopback_pod(tmpl, name):
    """A Pod named `name` from a pod template, on the host network, without probes."""
    spec = copy.deepcopy(tmpl["spec"])
    spec["hostNetwork"] = True
    spec.pop("topologySpreadConstraints", None)
    for c in spec["containers"]:
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            # podman 4.3 has no gRPC probe and turns exec probes into healthchecks: the checks
            # below do what the kubelet's probes would.
            c.pop(probe, None)
        c.pop("ports", None)  # host network: nothing to publish
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": tmpl["metadata"].get("labels", {})},
            "spec": spec}


def set_env(container, values):
    """Replaces the container's env: `values` first, then the entries it does not name, less
    POD_NAME (only used to build the DNS names that `values` replace)."""
    keep = [e for e in container.get("env", [])
            if e["name"] not in values and e["name"] != "POD_NAME"]
    container["env"] = [{"name": k, "value": v} for k, v in values.items()] + keep


def pod_volumes(pod, claims, prefix, volumes):
    """emptyDirs and volume claims of `pod` become named podman volumes."""
    name = pod["metadata"]["name"]
    spec = pod["spec"]
    out = []
    for v in spec.get("volumes", []):
        if "emptyDir" in v:
            vol = f"{prefix}-{name}-{v['name']}"
            volumes.append(vol)
            out.append({"name": v["name"], "persistentVolumeClaim": {"claimName": vol}})
        else:
            out.append(v)
    for c in claims:
        vol = f"{prefix}-{name}-{c}"
        volumes.append(vol)
        out.append({"name": c, "persistentVolumeClaim": {"claimName": vol}})
    spec["volumes"] = out


def own_configmaps(pod, configmaps, out):
    """Gives `pod` its own copy of each ConfigMap it mounts (NAME-<pod>). podman 4.3 writes a
    ConfigMap's volume anew for every pod of a play that mounts it, so a container of an
    earlier pod starting meanwhile could read a file half written (seen: redis-server started
    without its included redis.conf)."""
    for v in pod["spec"].get("volumes", []):
        cm = v.get("configMap")
        if cm is None:
            continue
        copy_ = copy.deepcopy(configmaps[cm["name"]])
        cm["name"] = copy_["metadata"]["name"] = f"{cm['name']}-{pod['metadata']['name']}"
        out.append(copy_)


def make_shared(args):
    docs = [d for d in yaml.safe_load_all(open(args.rendered)) if d]
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    redis_ports = [int(p) for p in args.redis_ports.split(",")]
    quotad_ports = [tuple(int(x) for x in p.split(":")) for p in args.quotad_ports.split(",")]
    sentinel = f"127.0.0.1:{args.sentinel_port}"
    primary = f"127.0.0.1 {redis_ports[0]}"
    configmaps = {}
    for d in docs:
        if d["kind"] == "ConfigMap":
            d["metadata"].pop("namespace", None)
            configmaps[d["metadata"]["name"]] = d
    pods, volumes = [], []

    redis = by[("StatefulSet", "redis")]
    claims = [t["metadata"]["name"] for t in redis["spec"].get("volumeClaimTemplates", [])]
    for i, port in enumerate(redis_ports):
        pod = loopback_pod(redis["spec"]["template"], f"redis-{i}")
        set_env(pod["spec"]["containers"][0], {
            "ANNOUNCE_HOST": "127.0.0.1", "REDIS_PORT": str(port), "REDIS_BIND": "127.0.0.1",
            "REDIS_INITIAL_PRIMARY": primary, "SENTINELS": sentinel})
        pod_volumes(pod, claims, args.volume_prefix, volumes)
        pods.append(pod)

    sts = by[("StatefulSet", "redis-sentinel")]
    pod = loopback_pod(sts["spec"]["template"], "redis-sentinel-0")
    set_env(pod["spec"]["containers"][0], {
        "ANNOUNCE_HOST": "127.0.0.1", "SENTINEL_PORT": str(args.sentinel_port),
        "SENTINEL_BIND": "127.0.0.1", "REDIS_INITIAL_PRIMARY": primary,
        "SENTINELS": sentinel, "QUORUM": "1"})
    pod_volumes(pod, [], args.volume_prefix, volumes)
    pods.append(pod)

    deployment = by[("Deployment", "quotad")]
    for i, (grpc_port, metrics_port) in enumerate(quotad_ports):
        pod = loopback_pod(deployment["spec"]["template"], f"quotad-{i}")
        c = pod["spec"]["containers"][0]
        redis_args = [a for a in c["args"] if a.startswith("--redis=")]
        if len(redis_args) != 1 or not redis_args[0].startswith("--redis=redis-sentinel://"):
            sys.exit(f"smoke.py: the Deployment's args hold no --redis=redis-sentinel:// URL: {c['args']}")
        c["args"] = [a for a in c["args"]
                     if not a.startswith(("--listen=", "--metrics_listen=", "--redis="))]
        c["args"] += [f"--listen=127.0.0.1:{grpc_port}",
                      f"--metrics_listen=127.0.0.1:{metrics_port}",
                      f"--redis=redis-sentinel://{sentinel}/{redis_args[0].rsplit('/', 1)[1]}"]
        pod_volumes(pod, [], args.volume_prefix, volumes)
        pods.append(pod)

    out = []
    for pod in pods:
        own_configmaps(pod, configmaps, out)
    out += pods
    with open(args.out, "w") as f:
        yaml.safe_dump_all(out, f, sort_keys=False)
    print("\n".join(volumes))


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
    print(f"smoke: 127.0.0.1:{args.port} quotad.v1.Quota/Acquire virustotal/prod requests ->"
          f" granted={resp.granted} lease_id={resp.lease_id!r} limited_by={resp.limited_by!r}")
    if not resp.granted:
        return 1
    for port in filter(None, args.lease_on_redis.split(",")):
        key = f"q:lease:{resp.lease_id}"
        out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", port, "EXISTS", key],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        print(f"smoke: redis 127.0.0.1:{port} EXISTS {key} -> {out}")
        if out != "1":
            return 1
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pod")
    a.add_argument("rendered")
    a.add_argument("out")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--volume", required=True)
    s = sub.add_parser("shared")
    s.add_argument("rendered")
    s.add_argument("out")
    s.add_argument("--redis-ports", required=True)
    s.add_argument("--sentinel-port", type=int, required=True)
    s.add_argument("--quotad-ports", required=True)
    s.add_argument("--volume-prefix", required=True)
    b = sub.add_parser("check")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--timeout", type=float, default=30)
    b.add_argument("--lease-on-redis", default="")
    args = p.parse_args()
    if args.cmd == "pod":
        make_pod(args)
        return 0
    if args.cmd == "shared":
        make_shared(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
