"""Leader election rules (core/lease.py): acquire, renew, wait, take over after a silent lease duration."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pax_operator.core.lease import Action, LeaseRecord, choose, next_record, observe, released
from pax_operator.kits.lease import LeaderElectionConfig

NOW = datetime(2026, 11, 30, 1, 2, 3, 456789, tzinfo=UTC)
OTHER = LeaseRecord(holder="b", duration_seconds=15, acquire_time="t0", renew_time="t0", transitions=3)


def test_absent_or_released_lease_is_acquired() -> None:
    assert choose(None, "a", now=0.0) is Action.ACQUIRE
    free = observe(None, LeaseRecord(holder=None), "7", now=0.0)
    assert choose(free, "a", now=0.0) is Action.ACQUIRE


def test_holder_renews_and_keeps_acquire_time() -> None:
    mine = LeaseRecord(holder="a", duration_seconds=15, acquire_time="t0", renew_time="t0", transitions=2)
    assert choose(observe(None, mine, "1", 0.0), "a", 100.0) is Action.RENEW
    renewed = next_record(mine, "a", Action.RENEW, NOW, 15)
    assert (renewed.acquire_time, renewed.transitions) == ("t0", 2)
    assert renewed.renew_time == "2026-11-30T01:02:03.456789Z"


def test_standby_waits_a_whole_duration_on_its_own_clock() -> None:
    first = observe(None, OTHER, "5", now=100.0)
    assert choose(first, "a", now=114.9) is Action.WAIT
    assert choose(observe(first, OTHER, "5", now=114.9), "a", now=115.0) is Action.ACQUIRE


def test_a_renewal_restarts_the_standbys_clock() -> None:
    first = observe(None, OTHER, "5", now=100.0)
    renewed = observe(first, OTHER, "6", now=112.0)  # a new resourceVersion: the holder is alive
    assert renewed.since == 112.0
    assert choose(renewed, "a", now=120.0) is Action.WAIT


def test_takeover_counts_a_transition_and_release_frees_the_lease() -> None:
    taken = next_record(OTHER, "a", Action.ACQUIRE, NOW, 15)
    assert (taken.holder, taken.transitions, taken.acquire_time) == ("a", 4, taken.renew_time)
    back = released(taken, "a", NOW)
    assert back is not None and back.holder is None and "holderIdentity" not in back.to_spec()
    assert released(taken, "someone-else", NOW) is None
    with pytest.raises(ValueError):
        next_record(OTHER, "a", Action.WAIT, NOW, 15)


def test_spec_round_trip() -> None:
    assert LeaseRecord.from_spec(OTHER.to_spec()) == OTHER
    assert LeaseRecord.from_spec(None) == LeaseRecord()


def test_config_rejects_inconsistent_clocks() -> None:
    with pytest.raises(ValueError, match="lease duration > renew deadline > retry period"):
        LeaderElectionConfig(namespace="ns", lease_duration=5, renew_deadline=10, retry_period=2)
