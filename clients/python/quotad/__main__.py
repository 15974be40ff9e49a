"""python3 -m quotad: a small CLI mirroring quotactl, for people without a C++ build.

    python3 -m quotad [--server=HOST:PORT] [--json] [--timeout=5s] [--tls --ca=FILE]
                      [--token=TOKEN | $QUOTAD_TOKEN] COMMAND ARGS
      acquire CREDENTIAL FEATURE [--scope=S] [--cost=N] [--ttl=30s] [--holder=H]
                                 [--request_id=ID] [--priority=P] [--max_wait=0s]
      release LEASE_ID [--used=N]
      usage CREDENTIAL
      leases [CREDENTIAL]

Exit codes as quotactl's: 0 granted / ok, 1 denied, 2 error (printed to stderr with its code).
A granted lease is left to its TTL (or `release LEASE_ID`): the CLI does not renew it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import re
import sys
from typing import Any, List, Optional

import quotad

OK, DENIED, ERROR = 0, 1, 2
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """"30s", "500ms", "1h30m", or plain seconds "2.5" -> seconds."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 500ms, 1h30m)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(x).items()}
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    if isinstance(x, _dt.datetime):
        return x.isoformat().replace("+00:00", "Z")
    return x


def _when(t: Optional[_dt.datetime]) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z") if t else "-"


def _limits_table(limits: List[quotad.LimitState]) -> str:
    rows = [("LIMIT", "SCOPE", "KIND", "USED", "CAPACITY", "REMAINING", "RESET")]
    rows += [(l.name, l.scope or "-", l.kind, str(l.used), str(l.capacity), str(l.remaining),
              _when(l.reset_at)) for l in limits]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m quotad", description="A client for quotad.")
    ap.add_argument("--server", default=os.environ.get("QUOTAD_SERVER", "localhost:50051"))
    ap.add_argument("--json", action="store_true", help="print the answer as JSON")
    ap.add_argument("--timeout", type=parse_duration, default=5.0, help="deadline of each call")
    ap.add_argument("--tls", action="store_true", help="connect with TLS")
    ap.add_argument("--ca", help="PEM CA bundle for --tls (default: the system's)")
    ap.add_argument("--token", default=os.environ.get("QUOTAD_TOKEN"),
                    help="bearer token (default $QUOTAD_TOKEN)")
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("acquire", help="acquire units; prints the lease id")
    a.add_argument("credential")
    a.add_argument("feature")
    a.add_argument("--scope", default="")
    a.add_argument("--cost", type=int, default=1)
    a.add_argument("--ttl", type=parse_duration, default=0.0)
    a.add_argument("--holder", default="")
    a.add_argument("--request_id", default="")
    a.add_argument("--priority", type=int, default=0)
    a.add_argument("--max_wait", type=parse_duration, default=0.0)
    r = sub.add_parser("release", help="release a lease")
    r.add_argument("lease_id")
    r.add_argument("--used", type=int, default=None)
    u = sub.add_parser("usage", help="every limit of a credential")
    u.add_argument("credential")
    l = sub.add_parser("leases", help="live leases")
    l.add_argument("credential", nargs="?", default="")
    args = ap.parse_args(argv)

    holder = getattr(args, "holder", "") or f"python-quotad@{os.uname().nodename}"
    try:
        client = quotad.QuotaClient(args.server, holder=holder, call_timeout=args.timeout,
                                    tls=args.tls, root_certificates=args.ca, token=args.token,
                                    insecure_token=bool(args.token) and not args.tls,
                                    retry=quotad.RetryPolicy(max_attempts=1))
    except (ValueError, OSError) as e:
        print(f"quotad: {e}", file=sys.stderr)
        return ERROR
    try:
        with client:
            return _run(client, args)
    except quotad.QuotaError as e:
        print(f"quotad: {e.code.name}: {e.details}", file=sys.stderr)
        return ERROR


def _run(client: quotad.QuotaClient, args: argparse.Namespace) -> int:
    if args.command == "acquire":
        lease = client.acquire(args.credential, args.feature, scope=args.scope, cost=args.cost,
                               lease_ttl=args.ttl or None, max_wait=args.max_wait or None,
                               priority=args.priority, request_id=args.request_id or None,
                               renew=False)
        lease.detach()  # the lease outlives this process: its TTL or `release` ends it
        if args.json:
            out = {"granted": lease.granted, "requestId": lease.request_id,
                   "limits": _jsonable(lease.limits)}
            if lease.granted:
                out.update(leaseId=lease.id, leaseExpiresAt=_jsonable(lease.expires_at))
            else:
                out.update(retryAfter=lease.retry_after, retryAt=_jsonable(lease.retry_at),
                           limitedBy=lease.limited_by)
            print(json.dumps(out, indent=2))
        elif lease.granted:
            print(lease.id)
            print(f"granted cost={lease.cost} expires_at={_when(lease.expires_at)}",
                  file=sys.stderr)
        else:
            print(f"denied limited_by={lease.limited_by} retry_after={lease.retry_after:.3f}s "
                  f"retry_at={_when(lease.retry_at)}")
        return OK if lease.granted else DENIED
    if args.command == "release":
        res = client.release_lease(args.lease_id, args.used)
        print(json.dumps(_jsonable(res)) if args.json
              else f"released refunded={res.refunded} freed={res.freed}")
        return OK
    if args.command == "usage":
        usage = client.usage(args.credential)
        if args.json:
            print(json.dumps(_jsonable(usage), indent=2))
        else:
            print(f"{usage.credential} (profile {usage.profile}) at {_when(usage.observed_at)}")
            print(_limits_table(usage.limits))
        return OK
    if args.command == "leases":
        leases = client.leases(args.credential)
        if args.json:
            print(json.dumps(_jsonable(leases), indent=2))
        else:
            rows = [("LEASE", "CREDENTIAL", "FEATURE", "SCOPE", "COST", "HOLDER", "EXPIRES")]
            rows += [(x.lease_id, x.credential, x.feature, x.scope or "-", str(x.cost), x.holder,
                      _when(x.expires_at)) for x in leases]
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            for r in rows:
                print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        return OK
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
