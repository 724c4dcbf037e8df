"""The owner record is compare-and-swapped: a run that lost it between its read and its write never
overwrites the winner (gs://: a generation precondition; local paths: an flock across read and write)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from pax_contract import ENV_JOB_NAME
from pax_trainer import ownership, paths
from pax_trainer.errors import ConfigError
from pax_trainer.ownership import OwnerRecord, Ownership


def _record(job: str) -> OwnerRecord:
    return OwnerRecord(job=job, host="elsewhere", pid=1, attempt=0, heartbeat=time.time())


@pytest.fixture
def gcs_dir(gcs, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in gcs.env().items():
        monkeypatch.setenv(name, value)
    paths.prepare_environment()
    return f"gs://pax/owner-{time.monotonic_ns()}"


@pytest.fixture(params=["local", "gcs"])
def job_log_dir(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return request.getfixturevalue("gcs_dir") if request.param == "gcs" else str(tmp_path / "job")


def test_a_heartbeat_that_lost_the_record_between_its_read_and_its_write_leaves_the_winner(
    job_log_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run alpha's record went stale; run beta takes over in the instant of alpha's next beat. Alpha's
    write used to win (read-then-write), so both trained on until alpha's following beat."""
    monkeypatch.setenv(ENV_JOB_NAME, "alpha")
    alpha = Ownership(job_log_dir)
    ownership._swap(job_log_dir, alpha._mine_or_free(released=False))
    assert ownership.read(job_log_dir).job == "paxjob/alpha"

    beta_claimed = threading.Event()

    def beat_while_beta_claims(current: OwnerRecord | None) -> OwnerRecord | None:
        def beta() -> None:  # a second writer, as another process would be
            ownership._swap(job_log_dir, lambda _: _record("paxjob/beta"))
            beta_claimed.set()

        threading.Thread(target=beta, daemon=True).start()
        # Locally beta waits for the lock until this swap is done; on gs:// it writes now, in the window.
        beta_claimed.wait(10 if paths.is_gcs(job_log_dir) else 0.5)
        return alpha._mine_or_free(released=False)(current)

    won = ownership._swap(job_log_dir, beat_while_beta_claims)
    assert beta_claimed.wait(10), "beta's claim never finished"
    assert won is not paths.is_gcs(job_log_dir)  # gs://: the precondition refused alpha's stale write
    assert ownership.read(job_log_dir).job == "paxjob/beta"  # locally beta wrote after alpha's beat
    assert alpha._other_owner() == "paxjob/beta"  # so alpha's heartbeat stops it (exit 2)


def test_two_simultaneous_claims_one_wins(job_log_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both claimants find the directory free; the one that writes second is refused, naming the other."""
    monkeypatch.setenv(ENV_JOB_NAME, "alpha")
    alpha = Ownership(job_log_dir)
    monkeypatch.setenv(ENV_JOB_NAME, "beta")
    beta = Ownership(job_log_dir)
    outcomes: dict[str, str] = {}

    def claim(run: Ownership, name: str) -> None:
        try:
            run.claim()
            outcomes[name] = "claimed"
        except ConfigError as err:
            outcomes[name] = str(err)

    admit = ownership._admit

    def let_alpha_claim_then_admit(record: OwnerRecord | None, me: str, path: str) -> None:
        monkeypatch.setattr(ownership, "_admit", admit)  # once: alpha's own claim is not held up
        rival = threading.Thread(target=claim, args=(alpha, "alpha"), daemon=True)
        rival.start()  # local: waits for beta's lock; gs://: claims now, between beta's read and write
        rival.join(10 if paths.is_gcs(job_log_dir) else 0.5)
        threads.append(rival)
        admit(record, me, path)

    threads: list[threading.Thread] = []
    monkeypatch.setattr(ownership, "_admit", let_alpha_claim_then_admit)
    try:
        claim(beta, "beta")
        threads[0].join(10)
        winner, loser = ("alpha", "beta") if paths.is_gcs(job_log_dir) else ("beta", "alpha")
        assert outcomes[winner] == "claimed", outcomes
        assert f"paxjob/{winner}" in outcomes[loser], outcomes
        assert ownership.read(job_log_dir).job == f"paxjob/{winner}"
    finally:
        for run in (alpha, beta):
            run._stop.set()


def test_the_record_is_json_a_person_can_read(gcs_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The conditional upload writes the same document as before: JSON, content type application/json."""
    import gcsfs

    monkeypatch.setenv(ENV_JOB_NAME, "alpha")
    assert ownership._swap(gcs_dir, Ownership(gcs_dir)._mine_or_free(released=True))
    fs = gcsfs.GCSFileSystem(skip_instance_cache=True)
    key = f"{gcs_dir[len('gs://') :]}/{ownership.OWNER_RECORD}"
    doc = json.loads(fs.cat_file(key))
    assert (doc["job"], doc["released"]) == ("paxjob/alpha", True)
    assert fs.info(key)["contentType"] == "application/json"
