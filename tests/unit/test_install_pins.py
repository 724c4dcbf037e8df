"""What `make setup` and the Dockerfile install: pyproject.toml's pins, every transitive package at the
version constraints.txt records, the same pip; and the image's build context holds what the Dockerfile
copies."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from pax_cluster.procs import REPO_ROOT


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _constraints() -> dict[str, str]:
    lines = (REPO_ROOT / "constraints.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    assert all(len(pin) == 2 for pin in pins), "constraints.txt holds NAME==VERSION lines only"
    return {_canonical(name): version for name, version in pins}


def test_constraints_agree_with_every_pyproject_pin() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    constraints = _constraints()
    drifted = []
    for requirement in (Requirement(r) for extra in project["optional-dependencies"].values() for r in extra):
        (pin,) = requirement.specifier  # every direct dependency is pinned exactly
        assert pin.operator == "==", requirement
        if constraints.get(_canonical(requirement.name)) != pin.version:
            drifted.append(f"{requirement.name}: pyproject {pin.version}, constraints.txt "
                           f"{constraints.get(_canonical(requirement.name))}")  # fmt: skip
    assert not drifted, "run `make lock`:\n" + "\n".join(drifted)


def test_make_setup_and_the_dockerfile_install_alike() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    (pip,) = re.findall(r"^PIP_VERSION := (\S+)$", makefile, re.M)
    assert f'pip install "pip=={pip}"' in dockerfile
    assert "-m pip install -q -c constraints.txt -e $(EXTRAS)" in makefile
    installs = re.findall(r"/opt/pax/bin/pip install (?!\"pip==)(.*?)(?:\s*\\?$|\s*;)", dockerfile, re.M)
    assert installs and all(i.startswith("-c constraints.txt ") for i in installs), installs


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    copied = {
        source.rstrip("/")
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    }
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[[line.startswith("#") for line in ignore].index(False)] == "*"  # everything else stays out
    admitted = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert copied == admitted
