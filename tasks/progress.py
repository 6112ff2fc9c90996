"""A processing run's progress: a percentage that only grows, shown as a Prefect progress artifact.

The total of a run is only known as it goes (jobs become ready while it runs, retries add
attempts), so the percentage is ``finished / planned`` with ``planned`` at least the jobs the run
expected when it started; it never goes back, stays below 100 until the run ends, and ends at
100. :func:`next_percentage` is the arithmetic; :class:`RunProgress` the artifact.
"""

from __future__ import annotations

import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact

#: How often the artifact is updated, at most: each update is an API call (100 ms under load).
PROGRESS_EVERY_SECONDS = 1.0
#: The highest percentage shown before the run has ended.
BEFORE_THE_END = 99.0


def next_percentage(shown: float, finished: int, planned: int) -> float:
    """The percentage to show after ``finished`` of ``planned`` attempts, never below ``shown``
    and below 100 until the run ends."""
    if planned <= 0:
        return shown
    return max(shown, min(BEFORE_THE_END, 100.0 * finished / planned))


class RunProgress:
    """The run's progress artifact: created at 0, updated at most once a second, 100 at the end."""

    def __init__(self, description: str, expected: int) -> None:
        self.expected = expected
        self.shown = 0.0
        self.reported_at = 0.0
        self.artifact_id = create_progress_artifact(progress=0.0, description=description)

    def update(self, finished: int, started: int) -> None:
        """``finished`` attempts of the ``started`` ones so far are done."""
        percentage = next_percentage(self.shown, finished, max(self.expected, started))
        if (
            percentage > self.shown
            and time.monotonic() - self.reported_at >= PROGRESS_EVERY_SECONDS
        ):
            self._show(percentage)

    def finish(self) -> None:
        self._show(100.0)

    def _show(self, percentage: float) -> None:
        update_progress_artifact(artifact_id=self.artifact_id, progress=percentage)
        self.shown = percentage
        self.reported_at = time.monotonic()
