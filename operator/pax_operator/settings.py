"""The operator's cadences and concurrency, defined once (flags in main.py override them at run time)."""

from __future__ import annotations

SCRAPE_INTERVAL_SECONDS = 10.0  # host 0's /metrics scrape (a changed answer wakes its job)
WORKERS = 4  # reconciles at a time (the work queue's workers)
KUBE_QPS = 200.0  # client-side limit of the reconcilers' API requests per second (0: none)
KUBE_BURST = 400  # requests allowed at once above the QPS
STARTUP_DEADLINE_SECONDS = 300.0  # a gang pod that cannot start (image, config, unschedulable) fails the job
