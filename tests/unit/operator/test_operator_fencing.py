"""The PaxSweep reconciler is fenced like the PaxJob one: a replica whose leadership is unconfirmed (a
leader paused past its renew deadline) proposes and creates nothing."""

from __future__ import annotations

from fake_api import FakeApi
from pax_operator.sweep import reconcile as sweep_reconcile
from pax_operator.sweep.reconcile import SweepReconciler
from test_sweep_tampering import _sweep_object


def test_a_fenced_sweep_reconciler_reads_nothing_and_creates_no_trial() -> None:
    api = FakeApi()
    api.answers["GET paxsweeps"] = _sweep_object()
    api.answers["LIST paxjobs"] = {"items": []}
    clients = api.clients()
    clients.may_write = lambda: False
    reconciler = SweepReconciler(clients)
    assert reconciler.reconcile("ns", "sw") == sweep_reconcile.NOT_LEADING_RETRY_SECONDS
    assert api.calls == [] and reconciler.rebuilds == 0
    clients.may_write = lambda: True
    reconciler.reconcile("ns", "sw")
    assert "POST paxjobs" in api.calls
