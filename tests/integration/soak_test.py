#!/usr/bin/python3
"""Soak: quotad's resources stay flat under a realistic mix, reloads and restarts (issue 18).

  soak_test.py --quotad=BIN --stubs=DIR [--seconds=60 | --minutes=N] [--csv=FILE]

Starts the real quotad binary with --state on loopback and drives it with a mix of Acquire
(window leases released or left to expire, concurrency leases renewed and released, some with
a request_id), Report (200s and 429s), config reloads (Admin.ReloadConfig and rewrites of the
watched file) and restarts on the same state file (SIGTERM, then kill -9, alternately).
Every second it samples the process's RSS and open fds (/proc/PID), the sizes of the state file
and its WAL, and the row count of each table (a read-only SQLite connection).

After the warm-up (the first quarter, at least 15 s) every figure must stay flat: the second
largest value of the last tenth of the run is at most 1.5x the largest of the warm-up plus a small
slack per figure. Two tables are bounded instead by what the client did recently, because their rows
end by time and go at the server's next compaction (once a minute): dedup by the request_ids
sent within dedup_window + that interval, leases (the slot leases) by the slots plus the leases
left to expire unreleased within that interval. The state file and its
WAL also have caps, whatever the warm-up saw: a restart empties the WAL, so a
WAL that only grows between restarts would otherwise pass as "flat" (the live state here is a
few thousand leases and answers: well under a megabyte).

Messages are built from server reflection (as grpcurl_test.py does): no quotad stubs needed.
Exit 0 on success, 1 on failure, 77 (skipped) when grpcio is not installed.
"""

import argparse
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

try:
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}", file=sys.stderr)
    sys.exit(77)

DEDUP_WINDOW_S = 20
COMPACT_INTERVAL_S = 60  # ServerOptions.compact_interval (not a flag)

CONFIG = """# soak_test.py's config (generation {gen})
profiles:
  - name: soak-window
    description: Generous windows; every grant is a refund-only lease of 2 s.
    throttle:
      status_codes: [429]
      backoff: {{initial: 1s, multiplier: 2, max: 2s}}
    features:
      - name: requests
        default_lease_ttl: 2s
        max_lease_ttl: 30s
        limits:
          - {{name: per_minute, kind: sliding, capacity: 100000000, period: 1m, sub_buckets: 60}}
          - {{name: per_day, kind: calendar, capacity: 1000000000, unit: day}}
      - name: jobs
        default_lease_ttl: 3s
        max_lease_ttl: 30s
        limits:
          - {{name: concurrent, kind: concurrency, capacity: 64}}
credentials:
{credentials}
"""

# Slack added to 1.5x the warm-up's largest value, per figure.
SLACK = {
    "rss_kb": 24 * 1024,
    "fds": 16,
    "db_bytes": 2 << 20,
    "wal_bytes": 8 << 20,
    "reservations": 200,
    "lease_log": 200,
}


# Caps: (bytes, samples that may exceed it). The WAL is checkpointed at 4 MiB or after 1 s, and
# the file holds live state. The WAL also takes what is committed while a checkpoint's fsyncs run:
# on a CI machine whose disk other tests share, one sample of 60 saw 17 MB at 4 s in. A WAL that
# checkpoints at all stays under 16 MiB in all but a few samples and never nears 64 MiB; one that
# does not (about 3 MB/s here, restarts 15-20 s apart) is over 16 MiB in most of each life.
CAP = {
    "wal_bytes": [(16 << 20, 3), (64 << 20, 0)],
    "db_bytes": [(8 << 20, 0)],
}


SLOTS = 8 * 64  # credentials x capacity of jobs.concurrent


def write_config(path, gen):
    creds = "\n".join(f"  - {{name: soak/c{i}, profile: soak-window}}" for i in range(8))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(CONFIG.format(gen=gen, credentials=creds))
    os.replace(tmp, path)


class Api:
    """Quota and Admin calls with message classes from server reflection."""

    def __init__(self, channel):
        from grpc.reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        pool = descriptor_pool.DescriptorPool()
        protos = {}

        def fetch(**kwargs):
            req = reflection_pb2.ServerReflectionRequest(**kwargs)
            resp = next(iter(stub.ServerReflectionInfo(iter([req]), timeout=10)))
            for raw in resp.file_descriptor_response.file_descriptor_proto:
                fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
                protos.setdefault(fd.name, fd)

        fetch(file_containing_symbol="quotad.v1.Quota")
        fetch(file_containing_symbol="quotad.v1.Admin")
        for fd in list(protos.values()):
            for dep in fd.dependency:
                if dep not in protos:
                    fetch(file_by_filename=dep)
        added = set()

        def add(name):
            if name in added or name not in protos:
                return
            for dep in protos[name].dependency:
                add(dep)
            pool.Add(protos[name])
            added.add(name)

        for name in list(protos):
            add(name)
        factory = message_factory.MessageFactory(pool)
        self.msg = {}
        self.calls = {}
        for service in ("quotad.v1.Quota", "quotad.v1.Admin"):
            for m in pool.FindServiceByName(service).methods:
                req = factory.GetPrototype(m.input_type)
                resp = factory.GetPrototype(m.output_type)
                self.msg[m.name] = req
                self.calls[m.name] = channel.unary_unary(
                    f"/{service}/{m.name}", request_serializer=req.SerializeToString,
                    response_deserializer=resp.FromString)

    def __call__(self, method, **fields):
        req = self.msg[method]()
        for k, v in fields.items():
            if k == "headers":
                for name, value in v:
                    h = req.headers.add()
                    h.name, h.value = name, value
            elif k in ("lease_ttl", "ttl"):
                getattr(req, k).FromSeconds(v)
            else:
                setattr(req, k, v)
        return self.calls[method](req, timeout=5)


class Quotad:
    def __init__(self, binary, config, state, workdir):
        self.binary, self.config, self.state, self.workdir = binary, config, state, workdir
        self.proc = None
        self.address = None
        self.lives = 0

    def start(self):
        self.lives += 1
        log_path = os.path.join(self.workdir, f"quotad-{self.lives}.log")
        log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [self.binary, f"--config={self.config}", f"--state={self.state}",
             "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
             f"--dedup_window={DEDUP_WINDOW_S}s", "--config_watch_interval=1s",
             "--shutdown_grace=2s"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = re.search(r"listening address=(\S+)", open(log_path).read())
            if m:
                self.address = m.group(1)
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"quotad exited with {self.proc.returncode}:\n"
                                   f"{open(log_path).read()}")
            time.sleep(0.02)
        raise RuntimeError("quotad did not log its address")

    def stop(self, sig):
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        if sig == signal.SIGTERM and code != 0:
            raise RuntimeError(f"quotad exited with {code} after SIGTERM")


class Load:
    """Client threads; each reconnects when quotad restarts (a new port)."""

    def __init__(self, quotad, threads):
        self.quotad = quotad
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {}
        self.errors = {}
        self.request_ids = []  # monotonic times of the request_ids sent
        self.unreleased = []  # monotonic times of the slot leases left to expire
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(threads)]

    def count(self, what, table=None):
        with self.lock:
            t = self.counts if table is None else table
            t[what] = t.get(what, 0) + 1

    def run(self, index):
        rng = random.Random(index)
        address = None
        api = None
        channel = None
        seq = 0
        while not self.stop.is_set():
            if address != self.quotad.address or api is None:
                if channel is not None:
                    channel.close()
                address = self.quotad.address
                try:
                    channel = grpc.insecure_channel(address)
                    grpc.channel_ready_future(channel).result(timeout=5)
                    api = Api(channel)
                except Exception:  # restarting: try the new address
                    api = None
                    time.sleep(0.05)
                    continue
            cred = f"soak/c{rng.randrange(8)}"
            try:
                r = rng.random()
                if r < 0.55:
                    fields = {"credential": cred, "feature": "requests",
                              "holder": f"w{index}"}
                    if rng.random() < 0.05:
                        seq += 1
                        fields["request_id"] = f"{index}-{seq}-{rng.getrandbits(32)}"
                        with self.lock:
                            self.request_ids.append(time.monotonic())
                    a = api("Acquire", **fields)
                    self.count("acquire")
                    if a.granted and rng.random() < 0.6:
                        api("Release", lease_id=a.lease_id, used=1)
                        self.count("release")
                elif r < 0.85:
                    a = api("Acquire", credential=cred, feature="jobs", holder=f"w{index}",
                            lease_ttl=3)
                    self.count("acquire")
                    if a.granted:
                        if rng.random() < 0.5:
                            api("Renew", lease_id=a.lease_id, ttl=3)
                            self.count("renew")
                        if rng.random() < 0.95:
                            api("Release", lease_id=a.lease_id, used=1)
                            self.count("release")
                        else:
                            with self.lock:
                                self.unreleased.append(time.monotonic())
                else:
                    status = 429 if rng.random() < 0.02 else 200
                    api("Report", credential=cred, feature="requests", http_status=status,
                        headers=[("retry-after", "1")] if status == 429 else [])
                    self.count("report")
            except grpc.RpcError as e:
                self.count(str(e.code()), self.errors)
                if e.code() in (grpc.StatusCode.UNAVAILABLE,
                                grpc.StatusCode.DEADLINE_EXCEEDED):
                    api = None
                    time.sleep(0.02)

    def request_ids_since(self, t):
        with self.lock:
            return sum(1 for x in self.request_ids if x >= t)

    def unreleased_since(self, t):
        with self.lock:
            return sum(1 for x in self.unreleased if x >= t)


def sample(quotad, state):
    pid = quotad.proc.pid
    s = {"t": time.monotonic()}
    try:
        with open(f"/proc/{pid}/status") as f:
            s["rss_kb"] = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        s["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, AttributeError):
        return None  # between lives
    s["db_bytes"] = os.path.getsize(state) if os.path.exists(state) else 0
    wal = state + "-wal"
    s["wal_bytes"] = os.path.getsize(wal) if os.path.exists(wal) else 0
    try:
        db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=2)
        for table in ("reservations", "leases", "lease_log", "dedup"):
            s[table] = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        db.close()
    except sqlite3.Error:
        return None
    return s


FIGURES = ["rss_kb", "fds", "db_bytes", "wal_bytes", "reservations", "leases", "lease_log",
           "dedup"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quotad", required=True)
    parser.add_argument("--stubs", required=True, help="directory with grpc/reflection stubs")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--minutes", type=float, default=0, help="overrides --seconds")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--csv", default="", help="write every sample here")
    args = parser.parse_args()
    sys.path.insert(0, args.stubs)
    grpc.__path__.append(os.path.join(args.stubs, "grpc"))
    duration = args.minutes * 60 if args.minutes > 0 else args.seconds
    warmup = max(15.0, duration / 4)
    restart_every = max(15.0, duration / 6)

    workdir = tempfile.mkdtemp(prefix="quotad-soak-")
    config = os.path.join(workdir, "quotad.yaml")
    state = os.path.join(workdir, "state.db")
    gen = 0
    write_config(config, gen)
    quotad = Quotad(args.quotad, config, state, workdir)
    quotad.start()
    load = Load(quotad, args.threads)
    for t in load.threads:
        t.start()

    samples = []
    start = time.monotonic()
    next_restart = start + restart_every
    next_reload = start + 5
    kill = False
    admin_channel = None
    failures = []
    try:
        while time.monotonic() - start < duration:
            time.sleep(max(0.0, start + len(samples) + 1 - time.monotonic()))
            now = time.monotonic()
            if now >= next_reload:
                next_reload = now + 5
                gen += 1
                if gen % 2 == 0:
                    write_config(config, gen)  # picked up by the watch
                else:
                    try:
                        admin_channel = grpc.insecure_channel(quotad.address)
                        Api(admin_channel)("ReloadConfig")
                        load.count("reload")
                    except grpc.RpcError as e:
                        load.count("reload:" + str(e.code()), load.errors)
                    finally:
                        admin_channel.close()
            if now >= next_restart and now - start < duration * 0.9:
                next_restart = now + restart_every
                quotad.stop(signal.SIGKILL if kill else signal.SIGTERM)
                load.count("kill -9" if kill else "sigterm")
                kill = not kill
                quotad.start()
            s = sample(quotad, state)
            if s is None:
                continue
            s["t"] -= start
            s["life"] = quotad.lives
            samples.append(s)
            if len(samples) % 10 == 0 or args.csv:
                print(" ".join(f"{k}={s[k]:.0f}" if k == "t" else f"{k}={s[k]}"
                               for k in ["t", "life"] + FIGURES), flush=True)
    finally:
        load.stop.set()
        for t in load.threads:
            t.join(timeout=10)
        try:
            quotad.stop(signal.SIGTERM)
        except Exception as e:  # reported below
            failures.append(f"final SIGTERM: {e}")

    if args.csv:
        with open(args.csv, "w") as f:
            f.write(",".join(["t", "life"] + FIGURES) + "\n")
            for s in samples:
                f.write(",".join(str(round(s[k], 1) if k == "t" else s[k])
                                 for k in ["t", "life"] + FIGURES) + "\n")
    print(f"calls: {load.counts}")
    print(f"errors: {load.errors}")

    warm = [s for s in samples if s["t"] < warmup]
    tail = [s for s in samples if s["t"] >= duration * 0.9]
    if len(warm) < 5 or len(tail) < 3:
        failures.append(f"too few samples: {len(warm)} in warm-up, {len(tail)} at the end")
    else:
        for k in FIGURES:
            first = samples[0][k]
            w = max(s[k] for s in warm)
            # The second largest of the end: one sample may catch a compaction that a starved
            # machine ran late (seen under two CPU hogs: leases 3385 against a bound of 2686,
            # 515 a second later); something that grows is high in every sample of the end.
            e = sorted(s[k] for s in tail)[-2]
            if k == "dedup":
                # Rows end dedup_window after their call and are deleted by the next compaction.
                recent = load.request_ids_since(time.monotonic() - DEDUP_WINDOW_S -
                                                COMPACT_INTERVAL_S - 10)
                bound = recent + 100
            elif k == "leases":
                # The slots in use, and the leases left unreleased, until the next compaction
                # after their 3 s ttl (a kill -9 may also lose a few queued releases).
                recent = load.unreleased_since(time.monotonic() - COMPACT_INTERVAL_S - 15)
                bound = SLOTS + recent * 1.25 + 300
            else:
                bound = w * 1.5 + SLACK[k]
            verdict = "ok" if e <= bound else "GROWS"
            print(f"{k:13s} start={first} warmup_max={w} end={e} "
                  f"end_max={max(s[k] for s in tail)} bound={bound:.0f} {verdict}")
            if e > bound:
                failures.append(f"{k} grew: {e} at the end > {bound:.0f} (warm-up max {w})")
    for k, caps in CAP.items():
        peak = max((s[k] for s in samples), default=0)
        for cap, allowed in caps:
            over = [s for s in samples if s[k] > cap]
            verdict = "OVER" if len(over) > allowed else "ok"
            print(f"{k:13s} peak={peak} cap={cap} over_in={len(over)} allowed={allowed} {verdict}")
            if len(over) > allowed:
                failures.append(
                    f"{k} over its cap of {cap} in {len(over)} of {len(samples)} samples, "
                    f"{allowed} allowed (peak {peak} at t={max(over, key=lambda s: s[k])['t']:.0f} s)")
    acquires = load.counts.get("acquire", 0)
    if acquires < duration * 50:
        failures.append(f"only {acquires} acquires in {duration:.0f} s: the load did not run")
    if failures:
        print("FAIL:\n  " + "\n  ".join(failures))
        print(f"logs in {workdir}")
        return 1
    subprocess.run(["rm", "-rf", workdir])
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
