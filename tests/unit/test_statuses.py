"""The status module is consistent with itself and with the reference table."""

from __future__ import annotations

import pytest

from db.statuses import (
    INITIAL,
    LEASED,
    PHASES,
    STATUS_IDS,
    SUCCESSFUL,
    TERMINAL,
    TRANSITIONS,
    Status,
    is_legal,
    statuses_in_phase,
)

#: The reference's status table, in its order: id -> name.
REFERENCE_ORDER = [
    "initialized",
    "configured",
    "ready",
    "queued",
    "started",
    "pre_processing",
    "processing",
    "post_processing",
    "processed",
    "start_publication",
    "published",
    "done",
    "internal_error",
    "external_error",
    "error_checked",
    "cancelled",
    "expired",
]

PHASE_NAMES = {"queued", "in-progress", "complete", "failed", "expired"}

#: The reference's transition table, written out again so that a change must be made twice.
REFERENCE_TRANSITIONS = {
    "initialized": "configured internal_error external_error cancelled",
    "configured": "ready internal_error cancelled",
    "ready": "queued internal_error external_error cancelled",
    "queued": "started internal_error",
    "started": "pre_processing internal_error external_error cancelled",
    "pre_processing": "processing internal_error external_error cancelled",
    "processing": "post_processing internal_error external_error cancelled",
    "post_processing": "processed internal_error external_error cancelled",
    "processed": "start_publication done internal_error external_error cancelled",
    "start_publication": "published internal_error external_error cancelled",
    "published": "done",
    "done": "internal_error external_error expired",
    "internal_error": "internal_error external_error error_checked",
    "external_error": "started internal_error external_error error_checked",
    "error_checked": " ".join(REFERENCE_ORDER),
    "cancelled": "internal_error",
    "expired": "initialized",
}


def test_ids_are_one_to_seventeen_in_reference_order() -> None:
    assert [status.value for status in Status] == REFERENCE_ORDER
    assert [STATUS_IDS[Status(name)] for name in REFERENCE_ORDER] == list(range(1, 18))
    assert all(status.id == STATUS_IDS[status] for status in Status)


def test_every_status_has_transitions_and_a_phase() -> None:
    assert set(TRANSITIONS) == set(Status)
    assert set(PHASES) == set(Status)
    assert set(PHASES.values()) == PHASE_NAMES
    for status in Status:
        assert TRANSITIONS[status], f"{status} has no way out"
        assert status.phase == PHASES[status]


def test_every_status_is_reachable_from_a_new_job() -> None:
    reached = set(INITIAL)
    frontier = list(INITIAL)
    while frontier:
        for target in TRANSITIONS[frontier.pop()]:
            if target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(Status)


def test_transitions_are_the_reference_table() -> None:
    table = {origin.value: {t.value for t in targets} for origin, targets in TRANSITIONS.items()}
    assert table == {
        origin: set(targets.split()) for origin, targets in REFERENCE_TRANSITIONS.items()
    }


def test_reference_edges() -> None:
    s = Status
    assert {s.INITIALIZED, s.CANCELLED} == INITIAL
    assert TRANSITIONS[s.PUBLISHED] == {s.DONE}
    assert TRANSITIONS[s.EXPIRED] == {s.INITIALIZED}
    assert TRANSITIONS[s.ERROR_CHECKED] == set(Status)
    assert TRANSITIONS[s.QUEUED] == {s.STARTED, s.INTERNAL_ERROR}
    assert s.INTERNAL_ERROR in TRANSITIONS[s.INTERNAL_ERROR]
    assert s.STARTED in TRANSITIONS[s.EXTERNAL_ERROR]
    # The usual retry path and the give-up path.
    assert is_legal(s.INTERNAL_ERROR, s.ERROR_CHECKED)
    assert is_legal(s.ERROR_CHECKED, s.READY)
    assert is_legal(s.ERROR_CHECKED, s.CANCELLED)


def test_status_sets_are_consistent() -> None:
    assert {Status.DONE, Status.INTERNAL_ERROR, Status.CANCELLED, Status.EXPIRED} == TERMINAL
    assert SUCCESSFUL <= TERMINAL
    assert all(status.terminal == (status in TERMINAL) for status in Status)
    assert not LEASED & TERMINAL
    assert Status.EXTERNAL_ERROR not in TERMINAL
    assert Status.ERROR_CHECKED not in TERMINAL


@pytest.mark.parametrize("origin", list(Status))
def test_is_legal_matches_the_transition_table(origin: Status) -> None:
    for target in Status:
        expected = target in TRANSITIONS[origin]
        assert is_legal(origin, target) is expected
        assert is_legal(origin.value, target.value) is expected


def test_is_legal_for_new_jobs_and_unknown_names() -> None:
    assert [s for s in Status if is_legal(None, s)] == [Status.INITIALIZED, Status.CANCELLED]
    assert not is_legal("initialized", "finished")
    assert not is_legal("nonsense", "configured")
    assert not is_legal(None, "nonsense")


def test_statuses_in_phase() -> None:
    s = Status
    assert statuses_in_phase("queued") == [s.INITIALIZED, s.CONFIGURED, s.READY, s.QUEUED]
    assert statuses_in_phase("in-progress") == [
        s.STARTED,
        s.PRE_PROCESSING,
        s.PROCESSING,
        s.POST_PROCESSING,
        s.PROCESSED,
        s.START_PUBLICATION,
        s.PUBLISHED,
    ]
    assert statuses_in_phase("complete") == [s.DONE]
    assert statuses_in_phase("failed") == [
        s.INTERNAL_ERROR,
        s.EXTERNAL_ERROR,
        s.ERROR_CHECKED,
        s.CANCELLED,
    ]
    assert statuses_in_phase("expired") == [s.EXPIRED]
    every = [status for phase in sorted(PHASE_NAMES) for status in statuses_in_phase(phase)]
    assert sorted(every, key=lambda status: status.id) == list(Status)


def test_unknown_phase_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"unknown phase 'running'.*'in-progress'"):
        statuses_in_phase("running")
