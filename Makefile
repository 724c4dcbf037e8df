# Pax on Kubernetes — every set-up step lives here (a fresh machine needs only Go + pyenv's Python 3.12).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTHON312 ?= $(shell ls -d $$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)/versions/3.12*/bin/python3.12 2>/dev/null | tail -1 || command -v python3.12)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
include hack/k8s-versions.env
HELM := $(or $(PAX_K8S_CACHE),$(HOME)/.cache/pax-k8s)/$(K8S_VERSION)/helm

.PHONY: help setup lock test test-unit test-trainer test-integration test-e2e demo demo-sweep bench bench-gpu bench-operator bench-sweep lint cluster-up cluster-down cluster-status k8s-bins helm-bin clean

help:
	@echo "make demo    - set up everything, run a 2-host PaxJob on a local control plane, preempt it, watch it resume"
	@echo "make demo-sweep - a PaxSweep over reverse_digits' learning rate: 6 trials (PaxJobs), 2 at a time, best trial"
	@echo "make test    - set up everything and run all test tiers"
	@echo "make bench   - trainer benchmarks (ratios against a baseline measured in the same run)"
	@echo "make bench-gpu - lm_1b steps/s, tokens/s, MFU on this machine's accelerator (tiny config on CPU)"
	@echo "make bench-operator - operator vs a direct client on the local apiserver (PAX_BENCH_SIZES=100 for a quick run)"
	@echo "make bench-sweep - PaxSweep controller: 1,000 simulated trials per algorithm on the local apiserver"
	@echo "make lint    - ruff, import-linter, yamllint, helm lint, hadolint"
	@echo "make cluster-up     - leave the whole local stack running (control plane, operator, process kubelet, GCS emulator)"
	@echo "make cluster-status / cluster-down - what runs (and what crashed) / stop it all"

PIP_VERSION := 26.3
EXTRAS := '.[trainer,operator,dev]'

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON312)" || { echo "error: Python 3.12 not found (pyenv install 3.12)"; exit 1; }
	$(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install -q pip==$(PIP_VERSION)
	$(PY) -m pip install -q -c constraints.txt -e $(EXTRAS)
	touch $(STAMP)

setup: $(STAMP)

# constraints.txt: a fresh resolve of pyproject.toml's pins (every transitive package too), in a scratch venv.
lock:
	rm -rf .lock-venv && $(PYTHON312) -m venv .lock-venv
	.lock-venv/bin/pip install -q pip==$(PIP_VERSION) && .lock-venv/bin/pip install -q -e $(EXTRAS)
	{ head -2 constraints.txt; .lock-venv/bin/pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .lock-venv

k8s-bins: setup
	bash hack/build-k8s.sh

helm-bin:
	bash hack/build-k8s.sh helm

lint: setup helm-bin
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/yamllint -s -c .yamllint deploy charts
	$(HELM) lint --strict charts/pax-operator
	$(VENV)/bin/hadolint Dockerfile

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-trainer: setup
	$(PY) -m pytest -q tests/trainer

test-integration: k8s-bins
	$(PY) -m pytest -q tests/integration

test-e2e: k8s-bins
	$(PY) -m pytest -q tests/e2e

test: setup lint k8s-bins
	$(PY) -m pytest -q -ra tests

bench: setup
	$(PY) -m pax_trainer.bench

# On a machine without network (the H200 box): bash hack/gpu/run-bench.sh (docs/accelerator.md).
bench-gpu: setup
	$(PY) -m pax_trainer.bench --accelerator $(BENCH_ARGS)

bench-operator: k8s-bins
	$(PY) -m pax_cluster.bench_operator

bench-sweep: k8s-bins
	$(PY) -m pax_cluster.bench_sweep

demo: k8s-bins
	$(PY) -m pax_cluster.demo

demo-sweep: k8s-bins
	$(PY) -m pax_cluster.demo_sweep

cluster-up: k8s-bins
	$(PY) -m pax_cluster.cli up

cluster-down: setup
	$(PY) -m pax_cluster.cli down

cluster-status: setup
	$(PY) -m pax_cluster.cli status

clean:
	-[ -x $(PY) ] && $(PY) -m pax_cluster.cli down
	rm -rf $(VENV) .cluster
