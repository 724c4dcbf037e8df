"""Unit tests of the control-plane tooling that need no binaries (never start the control plane)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from pax_cluster import pki, procs
from pax_cluster.binaries import BinariesNotFoundError, find_binaries, read_versions
from pax_cluster.kubeconfig import write_kubeconfig


def test_client_cert_carries_user_and_groups() -> None:
    ca = pki.new_ca()
    cred = pki.issue_client_cert(ca, "alice", ["devs", "ops"])
    cert = x509.load_pem_x509_certificate(cred.cert_pem)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        "devs",
        "ops",
    ]


def test_serving_cert_sans() -> None:
    ca = pki.new_ca()
    cert = x509.load_pem_x509_certificate(
        pki.issue_serving_cert(ca, "s", ["localhost", "127.0.0.1"]).cert_pem
    )
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_key_files_are_private(tmp_path: Path) -> None:
    crt, key = pki.new_ca().write(tmp_path, "ca")
    assert key.stat().st_mode & 0o077 == 0
    assert pki.CertKey.read(tmp_path, "ca").cert_pem == crt.read_bytes()


def test_kubeconfig_token_and_cert(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc", server="https://127.0.0.1:1", ca_pem=b"ca", user="u", token="t")
    config = yaml.safe_load(path.read_text())
    assert config["users"][0]["user"] == {"token": "t"}
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:1"
    with pytest.raises(ValueError):
        write_kubeconfig(tmp_path / "kc2", server="s", ca_pem=b"", user="u")


def test_missing_binaries_say_how_to_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAX_K8S_BIN_DIR", str(tmp_path))
    with pytest.raises(BinariesNotFoundError, match="make k8s-bins"):
        find_binaries()


def test_versions_file() -> None:
    versions = read_versions()
    assert versions["K8S_VERSION"].startswith("v1.")
    assert versions["ETCD_VERSION"].startswith("v3.")


def test_spawn_and_terminate_leave_nothing(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    p = procs.spawn(["/bin/sh", "-c", "echo started; trap '' TERM; sleep 60"], log, detach=False)
    deadline = time.monotonic() + 10
    while "started" not in procs.log_tail(log) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs.alive(p.pid, "/bin/sh")
    procs.terminate([p.pid], grace_s=0.5)  # ignores SIGTERM: needs the SIGKILL
    assert p.wait(timeout=5) == -9
    assert not procs.alive(p.pid)


def test_wait_for_returns_the_value_or_says_what_it_waited_for() -> None:
    values = iter([None, 0, "ready"])
    assert procs.wait_for("it", lambda: next(values), timeout=5, interval=0.01) == "ready"
    with pytest.raises(procs.WaitTimeout, match="waiting for the moon"):
        procs.wait_for("the moon", lambda: None, timeout=0.05, interval=0.01)


class Unready(RuntimeError):
    pass


def test_wait_ready_fails_fast_with_the_log_when_the_process_exits_or_time_runs_out(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    dying = procs.spawn(["/bin/sh", "-c", "echo bad flag >&2; exit 3"], log, detach=False)
    start = time.monotonic()
    with pytest.raises(Unready, match=r"(?s)server exited 3; log .*bad flag"):
        procs.wait_ready("server", dying, log, lambda: False, timeout=30, error=Unready, interval=0.01)
    assert time.monotonic() - start < 10  # the exit is seen, not the 30 s timeout

    slow = procs.spawn(["/bin/sh", "-c", "echo still starting; exec sleep 30"], log, detach=False)
    try:
        procs.wait_for("its first line", lambda: "still starting" in procs.log_tail(log), timeout=10)
        with pytest.raises(Unready, match=r"(?s)timed out after 0s waiting for server.*still starting"):
            procs.wait_ready("server", slow, log, lambda: False, timeout=0.1, error=Unready, interval=0.01)
        answers = iter([False, True])
        procs.wait_ready("server", slow, log, lambda: next(answers), timeout=5, error=Unready, interval=0.01)
    finally:
        procs.terminate([slow.pid], grace_s=1.0, is_alive=lambda _: slow.poll() is None)


def test_stop_and_status_hints_name_the_root_that_was_started(tmp_path: Path) -> None:
    from pax_cluster import cli

    assert cli._make_or_cli(cli.DEFAULT_ROOT.resolve(), "down") == "make cluster-down"
    hint = cli._make_or_cli(tmp_path, "down")
    assert hint.endswith(f"-m pax_cluster.cli down --root {tmp_path}")


def test_status_of_a_root_with_nothing_running_says_how_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pax_cluster import cli

    assert cli.main(["status", "--root", str(tmp_path)]) == 1
    assert f"--root {tmp_path}" in capsys.readouterr().out
    assert cli.main(["down", "--root", str(tmp_path)]) == 0


def test_demo_root_outside_cluster_is_emptied_only_if_a_demo_marked_it(tmp_path: Path) -> None:
    from pax_cluster.demo import DEMO_MARKER, demo_args

    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(SystemExit):
        demo_args(["--root", str(precious)], "pax-demo", "doc", steps=1)
    assert (precious / "thesis.tex").read_text() == "years of work"
    fresh = demo_args(["--root", str(tmp_path / "new"), "--steps", "7"], "pax-demo", "doc", steps=1)
    assert fresh.steps == 7 and (fresh.root / DEMO_MARKER).exists()
    (fresh.root / "old-run.log").write_text("x")
    again = demo_args(["--root", str(fresh.root)], "pax-demo", "doc", steps=1)
    assert list(again.root.iterdir()) == [again.root / DEMO_MARKER]  # a demo's own root is emptied


def test_demo_root_is_never_the_cluster_folder_or_another_folder_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pax_cluster import demo

    monkeypatch.setattr(demo, "REPO_ROOT", tmp_path)
    stack = tmp_path / ".cluster"
    (stack / "cp").mkdir(parents=True)
    (stack / "cp" / "etcd.db").write_text("a running stack's state")
    with pytest.raises(SystemExit):
        demo.demo_args(["--root", str(stack)], "pax-demo", "doc", steps=1)
    assert (stack / "cp" / "etcd.db").exists()
    below = demo.demo_args(["--root", str(stack / "demo")], "pax-demo", "doc", steps=1)
    assert below.root == stack / "demo"
    (stack / "gcs").mkdir()  # cluster-up's GCS emulator data: users' checkpoints in gs://pax-local
    (stack / "gcs" / "ckpt").write_text("a user's checkpoint")
    with pytest.raises(SystemExit):
        demo.demo_args(["--root", str(stack / "gcs")], "pax-demo", "doc", steps=1)
    assert (stack / "gcs" / "ckpt").exists()


def test_demo_shows_the_preempted_hosts_own_lines_once_it_exited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator restarts the gang at the deletion, before host 1 has even logged its SIGTERM: the
    demo read host 1's log at once and showed none of its SIGTERM / checkpoint / exit 42 story."""
    import threading
    from types import SimpleNamespace

    from pax_cluster.demo import Demo, preemption_lines

    log = tmp_path / "trainer.log"
    log.write_text("step 250/600 loss 2.4\n")
    story = (
        "pax_trainer: SIGTERM received: checkpointing at the next step boundary\n"
        "INFO [p1] pax_trainer: exiting 42: preempted: checkpoint saved at step 280\n"
    )
    writer = threading.Timer(1.5, lambda: log.write_text(log.read_text() + story))
    writer.start()
    try:
        Demo._show_preempted_host(SimpleNamespace(trainer_log=lambda pod: log))  # type: ignore[arg-type]
    finally:
        writer.join()
    out = capsys.readouterr().out
    assert "host 1 (attempt 0): pax_trainer: SIGTERM received" in out
    assert "exiting 42: preempted: checkpoint saved at step 280" in out
    assert preemption_lines("step 1\n") == ([], False)


def test_a_stale_state_file_never_names_another_process_of_the_same_executable(tmp_path: Path) -> None:
    """After a reboot or a crash long ago, the pid in stack.json may be another process of the same
    executable (another venv python, another stack's etcd): status called it running, and `down`
    SIGTERMed, then SIGKILLed, its process group."""
    import json
    import sys

    from pax_cluster import cli
    from pax_cluster.stack import STATE_FILE

    decoy = procs.spawn(
        [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "d.log", detach=False
    )
    try:
        started = procs.start_time(decoy.pid)
        assert started is not None and procs.alive(decoy.pid, sys.executable, started)
        stale = {  # a kubelet that once had this pid, started at another time
            "name": "kubelet",
            "pid": decoy.pid,
            "exe": sys.executable,
            "log": str(tmp_path / "kubelet.log"),
            "started": started - 1,
        }
        state = {"gcs_port": None, "kubeconfig": "", "components": [stale]}
        (tmp_path / STATE_FILE).write_text(json.dumps(state))
        assert cli.main(["status", "--root", str(tmp_path)]) == 1  # the kubelet is reported crashed
        assert cli.main(["down", "--root", str(tmp_path)]) == 0
        assert decoy.poll() is None, "down killed a process that was not the stack's"
    finally:
        decoy.kill()
        decoy.wait()


def test_cluster_up_names_pod_ports_another_process_holds_on_every_address(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process listening on 0.0.0.0 at a pod port (a TensorBoard of one's own with --bind_all, say)
    makes every pod's bind of its own IP fail (EADDRINUSE): the pods failed with nothing said up front."""
    import socket

    from pax_cluster import cli

    with socket.socket() as everywhere, socket.socket() as loopback_only:
        everywhere.bind(("0.0.0.0", 0))
        everywhere.listen()
        loopback_only.bind(("127.0.0.1", 0))
        loopback_only.listen()
        taken, fine = everywhere.getsockname()[1], loopback_only.getsockname()[1]
        assert procs.taken_on_every_address([taken, fine]) == [taken]
        monkeypatch.setattr(cli, "POD_PORTS", {taken: "the sidecar", fine: "the trainer"})
        cli._warn_taken_ports()
    out = capsys.readouterr().out
    assert f"another process listens on every address at port {taken}" in out and "the sidecar" in out
    assert str(fine) not in out
