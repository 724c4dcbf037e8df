"""Leader election rules (core/lease.py): acquire, renew, wait, take over after a silent lease duration."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException
from pax_operator.adapters import lease as lease_kit
from pax_operator.adapters.lease import Elector, LeaderElectionConfig, Leadership
from pax_operator.core.lease import Action, LeaseRecord, choose, next_record, observe, released

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


class FakeLeases:
    """An in-memory Lease endpoint with resourceVersion conflicts (the unit tier's stand-in apiserver)."""

    def __init__(self) -> None:
        self.lease: dict | None = None
        self.version = 0
        self.down = False
        self.failure: Exception = OSError("connection refused")

    def _answer(self) -> SimpleNamespace:
        return SimpleNamespace(data=json.dumps(self.lease).encode())

    def read_namespaced_lease(self, name: str, namespace: str, **_: object) -> SimpleNamespace:
        if self.down:
            raise self.failure
        if self.lease is None:
            raise ApiException(status=404)
        return self._answer()

    def create_namespaced_lease(self, namespace: str, body: dict, **_: object) -> SimpleNamespace:
        if self.lease is not None:
            raise ApiException(status=409)
        return self._store(body)

    def replace_namespaced_lease(self, name: str, namespace: str, body: dict, **_: object) -> SimpleNamespace:
        if self.down:
            raise self.failure
        assert self.lease is not None
        if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409)
        return self._store(body)

    def _store(self, body: dict) -> SimpleNamespace:
        self.version += 1
        self.lease = {
            "metadata": {**body["metadata"], "resourceVersion": str(self.version)},
            "spec": body["spec"],
        }
        return self._answer()


def test_electors_one_leads_the_other_takes_over_after_a_silent_duration(monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(lease_kit.time, "monotonic", lambda: clock[0])
    api = FakeLeases()
    settings = {"namespace": "ns", "lease_duration": 15, "renew_deadline": 10, "retry_period": 2}
    a = Elector(LeaderElectionConfig(identity="a", **settings), api=api)  # type: ignore[arg-type]
    b = Elector(LeaderElectionConfig(identity="b", **settings), api=api)  # type: ignore[arg-type]
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    assert b.healthy() and api.lease["spec"]["holderIdentity"] == "a"
    for _ in range(10):  # a renews every 2 s: b keeps waiting
        clock[0] += 2
        assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    clock[0] += 14  # a is gone (no renewals); b has seen the same record for 14 s
    assert not b.try_acquire_or_renew()
    clock[0] += 1
    assert b.try_acquire_or_renew()
    assert api.lease["spec"]["holderIdentity"] == "b" and api.lease["spec"]["leaseTransitions"] == 1
    assert not a.try_acquire_or_renew()  # the old leader now sees another holder
    b.leading = True
    b.release()
    assert "holderIdentity" not in api.lease["spec"]
    assert a.try_acquire_or_renew()  # a released Lease is taken at once


# What the generated client raises when nothing answers: urllib3's errors are not OSErrors, and one of them
# ended the campaign for good (never leading, nobody stopping the process, /readyz still "leading").
UNREACHABLE = [
    OSError("connection refused"),
    urllib3.exceptions.MaxRetryError(None, "/apis", reason=OSError("connection refused")),
    urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError()),
    urllib3.exceptions.ReadTimeoutError(None, "/apis", "read timed out"),
]


@pytest.mark.parametrize("failure", UNREACHABLE, ids=lambda err: type(err).__name__)
def test_elector_unreachable_apiserver_is_not_leading_nor_healthy(monkeypatch, failure: Exception) -> None:
    clock = [0.0]
    monkeypatch.setattr(lease_kit.time, "monotonic", lambda: clock[0])
    api = FakeLeases()
    api.down, api.failure = True, failure
    elector = Elector(LeaderElectionConfig(namespace="ns", identity="a"), api=api)  # type: ignore[arg-type]
    assert not elector.try_acquire_or_renew() and not elector.healthy()
    leadership = Leadership(elector=elector)
    assert leadership.readiness()[0] is False
    api.down = False
    assert elector.try_acquire_or_renew()
    clock[0] += 1
    assert elector.healthy()

    def unanswered(*_: object, **__: object) -> None:
        raise failure

    api.replace_namespaced_lease = unanswered  # type: ignore[method-assign]  # the renewal's write
    assert not elector.try_acquire_or_renew()
    elector.leading = True
    elector.release()  # a clean shutdown with the apiserver gone: a warning, not a crash


def test_a_leader_paused_past_its_renew_deadline_is_fenced_before_a_standby_can_lead(monkeypatch) -> None:
    """SIGSTOP, a stalled VM: the monotonic clock runs on while the leader sleeps. On waking its writes are
    refused until a renewal succeeds, well before the standby's lease duration ends."""
    clock = [1000.0]
    monkeypatch.setattr(lease_kit.time, "monotonic", lambda: clock[0])
    api = FakeLeases()
    settings = {"namespace": "ns", "lease_duration": 15, "renew_deadline": 10, "retry_period": 2}
    a = Elector(LeaderElectionConfig(identity="a", **settings), api=api)  # type: ignore[arg-type]
    leadership = Leadership(elector=a)
    assert not leadership.may_write()  # not leading yet
    a.leading = a.try_acquire_or_renew()
    assert leadership.may_write()
    clock[0] += 9.9
    assert leadership.may_write()
    clock[0] += 0.1  # paused through the renew deadline: a standby may take over 5 s from now
    assert not leadership.may_write()
    assert a.try_acquire_or_renew() and leadership.may_write()  # renewed: nobody else led meanwhile
    assert Leadership().may_write()  # no leader election: always


def test_fenced_clients_send_no_write_and_reads_still_go() -> None:
    from fake_api import FakeApi
    from pax_operator.adapters import kube

    api = FakeApi()
    clients = kube.Clients(api, may_write=lambda: False)
    for verb in ("POST", "PUT", "PATCH", "DELETE"):
        with pytest.raises(kube.NotLeading):
            clients.request(verb, "/api/v1/namespaces/ns/pods", {})
    assert api.calls == []
    clients.request("GET", "/api/v1/namespaces/ns/pods/lm-0")
    assert api.calls == ["GET pods"]
