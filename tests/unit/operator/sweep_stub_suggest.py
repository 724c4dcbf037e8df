"""A stand-in for the GP-bandit suggestion, run in the Suggester's worker process: light to import."""

from __future__ import annotations

import time


def slow_suggestion(seconds: float, tag: str) -> list[dict[str, str]]:
    time.sleep(seconds)
    return [{"tag": tag}]
