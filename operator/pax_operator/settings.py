"""The operator's cadences and concurrency, defined once (flags in main.py override them at run time)."""

from __future__ import annotations

SCRAPE_INTERVAL_SECONDS = 10.0  # host 0's /metrics scrape, also the hang-check and running requeue cadence
WORKERS = 4  # reconciles at a time (the work queue's workers)
