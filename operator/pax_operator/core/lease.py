"""Leader election rules over a coordination.k8s.io/v1 Lease (pure; the I/O is adapters/lease.py).

The rules are client-go's: the holder renews the Lease every retry period; a candidate takes it over only
after it has seen the same record unchanged for a whole lease duration, measured on its own monotonic
clock (never by comparing the holder's renewTime with its own wall clock, so clock skew between machines
does not matter).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

MICRO_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class Action(enum.Enum):
    RENEW = "renew"  # we hold it: write a fresh renewTime
    ACQUIRE = "acquire"  # free or expired: write ourselves as the holder
    WAIT = "wait"  # someone else holds it and has renewed within the lease duration


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec, as leader election uses it."""

    holder: str | None = None
    duration_seconds: int = 15
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> LeaseRecord:
        spec = spec or {}
        return cls(
            holder=spec.get("holderIdentity") or None,
            duration_seconds=int(spec.get("leaseDurationSeconds") or 15),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration_seconds,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }
        return {key: value for key, value in spec.items() if value is not None}


@dataclass(frozen=True)
class Sighting:
    """A record and when (candidate's monotonic seconds) it was first seen with this resourceVersion."""

    record: LeaseRecord
    resource_version: str
    since: float


def observe(previous: Sighting | None, record: LeaseRecord, resource_version: str, now: float) -> Sighting:
    """Remember when the record last changed: an unchanged resourceVersion keeps the old `since`."""
    if previous is not None and previous.resource_version == resource_version:
        return previous
    return Sighting(record=record, resource_version=resource_version, since=now)


def choose(sighting: Sighting | None, identity: str, now: float) -> Action:
    """What a candidate does given the latest sighting of the Lease (None: the Lease does not exist)."""
    if sighting is None or sighting.record.holder is None:
        return Action.ACQUIRE
    if sighting.record.holder == identity:
        return Action.RENEW
    if now - sighting.since >= sighting.record.duration_seconds:
        return Action.ACQUIRE  # the holder has not renewed for a whole lease duration
    return Action.WAIT


def next_record(
    current: LeaseRecord | None, identity: str, action: Action, now: datetime, duration_seconds: int
) -> LeaseRecord:
    """The record to write for RENEW or ACQUIRE (a takeover from someone else counts a transition)."""
    if action is Action.WAIT:
        raise ValueError("nothing to write while waiting")
    stamp = now.strftime(MICRO_TIME_FORMAT)
    current = current or LeaseRecord()
    if action is Action.RENEW and current.holder == identity:
        return replace(current, renew_time=stamp, duration_seconds=duration_seconds)
    transitions = current.transitions + (1 if current.holder not in (None, identity) else 0)
    return LeaseRecord(
        holder=identity,
        duration_seconds=duration_seconds,
        acquire_time=stamp,
        renew_time=stamp,
        transitions=transitions,
    )


def released(current: LeaseRecord, identity: str, now: datetime) -> LeaseRecord | None:
    """The record that hands the Lease back on a clean shutdown (a standby then takes it at once)."""
    if current.holder != identity:
        return None
    return replace(current, holder=None, duration_seconds=1, renew_time=now.strftime(MICRO_TIME_FORMAT))
