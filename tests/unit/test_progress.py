"""The progress percentage of a processing run only grows and reaches 100 only at the end."""

from __future__ import annotations

from tasks.progress import BEFORE_THE_END, next_percentage


def test_the_percentage_never_goes_back_while_the_plan_grows() -> None:
    shown, seen = 0.0, []
    # (finished, planned): the run claims more jobs as it goes, so the plan grows.
    for finished, planned in [(0, 16), (4, 16), (12, 16), (12, 28), (20, 28), (28, 40), (40, 40)]:
        shown = next_percentage(shown, finished, planned)
        seen.append(shown)
    assert seen == sorted(seen)
    assert seen[:3] == [0.0, 25.0, 75.0]
    assert seen[3] == 75.0, "12 of 28 would be 43 %: the bar stays where it was"
    assert max(seen) == BEFORE_THE_END < 100.0, "100 only when the run ends"


def test_an_empty_plan_keeps_what_is_shown() -> None:
    assert next_percentage(0.0, 0, 0) == 0.0
    assert next_percentage(30.0, 5, 0) == 30.0
