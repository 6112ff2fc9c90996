"""The retry policy of transient failures: exponential backoff with jitter."""

from __future__ import annotations

import random

from jobline.settings import Settings


def backoff_seconds(attempt: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Delay before attempt ``attempt + 1``: base * 2^(attempt - 1), capped, times a random
    factor in [0.5, 1] so that jobs that failed together do not come back together."""
    base = settings.retry_base_seconds * 2 ** max(attempt - 1, 0)
    capped = min(base, settings.retry_max_seconds)
    return capped * (0.5 + 0.5 * (rng or random).random())
