"""Value types of the Admin calls the clients expose (usage, leases)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import List, Optional

from quotad._common import LimitState, from_timestamp_pb
from quotad.v1 import quotad_pb2 as pb


@dataclasses.dataclass(frozen=True)
class Usage:
    """Every limit of one credential at ``observed_at`` (server time)."""
    credential: str
    profile: str
    limits: List[LimitState]
    observed_at: Optional[_dt.datetime]


@dataclasses.dataclass(frozen=True)
class LeaseInfo:
    """A live lease as quotad lists it."""
    lease_id: str
    credential: str
    feature: str
    scope: str
    holder: str
    cost: int
    granted_at: Optional[_dt.datetime]
    expires_at: Optional[_dt.datetime]
    holds_slots: bool


def usage_from_pb(r: "pb.GetUsageResponse") -> Usage:
    return Usage(r.credential, r.profile, [LimitState.from_pb(l) for l in r.limits],
                 from_timestamp_pb(r.observed_at) if r.HasField("observed_at") else None)


def lease_infos(r: "pb.ListLeasesResponse") -> List[LeaseInfo]:
    return [LeaseInfo(l.lease_id, l.credential, l.feature, l.scope, l.holder, l.cost,
                      from_timestamp_pb(l.granted_at) if l.HasField("granted_at") else None,
                      from_timestamp_pb(l.expires_at) if l.HasField("expires_at") else None,
                      l.holds_slots) for l in r.leases]
