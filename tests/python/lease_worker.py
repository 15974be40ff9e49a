#!/usr/bin/python3
"""A worker holding one renewed lease until it is killed: lease_worker.py ADDRESS CREDENTIAL FEATURE.

Prints "held lease=ID" once the lease is granted, then waits forever (the test SIGKILLs it).
"""

import sys
import threading

import quotad

client = quotad.QuotaClient(sys.argv[1], holder="lease_worker")
lease = client.acquire(sys.argv[2], sys.argv[3])
if not lease.granted:
    print(f"denied limited_by={lease.limited_by}", flush=True)
    sys.exit(1)
print(f"held lease={lease.id}", flush=True)
threading.Event().wait()
