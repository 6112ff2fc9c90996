"""The database's own guard (db.guard) agrees with db.statuses on every pair of statuses.

Raw SQL is used on purpose: the guard must hold for code that bypasses the store. One job per
from-status is walked there through legal store transitions; each (from, to) update is then tried
inside a savepoint that is rolled back, so 17 jobs cover all 289 pairs.
"""

from __future__ import annotations

from collections import deque

import pytest
from sqlalchemy import Connection, bindparam, func, select, text
from sqlalchemy.exc import DBAPIError

from db.guard import ILLEGAL_TRANSITION_MARKER
from db.models import Job, JobStatusChange, UtcDateTime, sql_list
from db.records import NewJob, RunIds
from db.statuses import TERMINAL, TRANSITIONS, Status, is_legal
from db.store import JobStore
from jobline.exceptions import IllegalTransition


def legal_path(target: Status) -> list[Status]:
    """The shortest legal walk from ``initialized`` to ``target`` (without the start)."""
    previous: dict[Status, Status | None] = {Status.INITIALIZED: None}
    queue = deque([Status.INITIALIZED])
    while queue:
        current = queue.popleft()
        for following in sorted(TRANSITIONS[current], key=lambda status: status.id):
            if following not in previous:
                previous[following] = current
                queue.append(following)
    path: list[Status] = []
    step: Status | None = target
    while step is not None and step is not Status.INITIALIZED:
        path.append(step)
        step = previous[step]
    return path[::-1]


def walk(store: JobStore, job_id: int, target: Status) -> None:
    """Move an ``initialized`` job to ``target`` through the store, checking ``finished_at``."""
    current = Status.INITIALIZED
    for step in legal_path(target):
        job = store.transition(job_id, step, expected_from=current, message=f"to {step}")
        assert (job.finished_at is not None) == (step in TERMINAL), f"{current} -> {step}"
        current = step


def jobs_in_every_status(store: JobStore) -> dict[Status, int]:
    """One job per status, each brought there by legal transitions."""
    result = store.insert_jobs(NewJob("guard", f"from-{status.value}") for status in Status)
    job_ids = dict(zip(Status, result.inserted_ids, strict=True))
    for status, job_id in job_ids.items():
        walk(store, job_id, status)
    return job_ids


def raw_transition(connection: Connection, job_id: int, origin: Status, target: Status) -> None:
    """Change the status with plain SQL, as an operator at a SQL prompt would."""
    # A self-transition is recognised by the bumped sequence (see db.guard).
    assignment = "status_seq = status_seq + 1" if origin == target else "status = :target"
    if connection.dialect.name == "sqlite":
        # SQLite triggers cannot fill in finished_at before the CHECK runs: raw SQL sets it.
        assignment += (
            f", finished_at = CASE WHEN :target IN ({sql_list(TERMINAL)}) "
            "THEN coalesce(finished_at, '2030-01-01 00:00:00.000000') ELSE NULL END"
        )
    connection.execute(
        text(f"UPDATE jobs SET {assignment} WHERE id = :job_id"),
        {"target": target.value, "job_id": job_id},
    )


def history_count(connection: Connection, job_id: int) -> int:
    statement = select(func.count()).where(JobStatusChange.job_id == job_id)
    return connection.execute(statement).scalar_one()


def try_pair(connection: Connection, job_id: int, origin: Status, target: Status) -> list[str]:
    """Try ``origin -> target`` in a rolled-back savepoint; returns what went wrong, if anything."""
    legal = is_legal(origin, target)
    before = history_count(connection, job_id)
    savepoint = connection.begin_nested()
    try:
        raw_transition(connection, job_id, origin, target)
    except DBAPIError as error:
        savepoint.rollback()
        if legal:
            return [f"{origin} -> {target} is legal but was refused: {error.orig}"]
        if ILLEGAL_TRANSITION_MARKER not in str(error.orig):
            return [f"{origin} -> {target} was refused, but not by the guard: {error.orig}"]
        return []
    try:
        if not legal:
            return [f"{origin} -> {target} is illegal but was accepted"]
        return _check_accepted(connection, job_id, origin, target, before)
    finally:
        savepoint.rollback()


def _check_accepted(
    connection: Connection, job_id: int, origin: Status, target: Status, before: int
) -> list[str]:
    problems = []
    status, finished_at = connection.execute(
        select(Job.status, Job.finished_at).where(Job.id == job_id)
    ).one()
    if status != target:
        problems.append(f"{origin} -> {target}: job is {status}")
    if (finished_at is not None) != (target in TERMINAL):
        problems.append(f"{origin} -> {target}: finished_at is {finished_at}")
    if history_count(connection, job_id) != before + 1:
        problems.append(f"{origin} -> {target}: no single new history row")
    last = connection.execute(
        select(JobStatusChange.from_status, JobStatusChange.to_status)
        .where(JobStatusChange.job_id == job_id)
        .order_by(JobStatusChange.id.desc())
        .limit(1)
    ).one()
    if tuple(last) != (origin.value, target.value):
        problems.append(f"{origin} -> {target}: history row says {tuple(last)}")
    return problems


def test_every_pair_of_statuses_is_guarded_as_the_table_says(store: JobStore) -> None:
    job_ids = jobs_in_every_status(store)
    problems: list[str] = []
    with store.engine.connect() as connection, connection.begin() as transaction:
        for origin, job_id in job_ids.items():
            for target in Status:
                problems += try_pair(connection, job_id, origin, target)
        transaction.rollback()
    assert not problems, "\n".join(problems)
    # The savepoints left every job where it was.
    assert [job.status for job in store.get_jobs(job_ids.values())] == [s.value for s in Status]


def test_new_jobs_only_start_initialized_or_cancelled(store: JobStore) -> None:
    [job_id] = store.insert_jobs([NewJob("guard", "template")]).inserted_ids
    kept = ("id", "job_key", "status", "finished_at")
    columns = ", ".join(c.name for c in Job.__table__.columns if c.name not in kept)
    copy = text(
        f"INSERT INTO jobs (job_key, status, finished_at, {columns}) "
        f"SELECT :key, :status, :finished_at, {columns} FROM jobs WHERE id = :job_id"
    ).bindparams(bindparam("finished_at", type_=UtcDateTime))
    for number, status in enumerate(Status):
        finished_at = store.clock() if status in TERMINAL else None
        row = {"key": bytes([number]) * 16, "status": status.value, "finished_at": finished_at}
        with store.engine.connect() as connection, connection.begin():
            if is_legal(None, status):
                connection.execute(copy, {**row, "job_id": job_id})
                continue
            with pytest.raises(DBAPIError, match=ILLEGAL_TRANSITION_MARKER):
                connection.execute(copy, {**row, "job_id": job_id})
    created = [
        (change.from_status, change.to_status)
        for job in store.list_jobs().jobs
        for change in store.history(job.id)
    ]
    assert created == [(None, "initialized"), (None, "initialized"), (None, "cancelled")]
    with pytest.raises(IllegalTransition, match=r"\(new job\) -> ready"):
        store.insert_jobs([NewJob("guard", "early", status=Status.READY)])


def test_self_transition_writes_a_history_row(store: JobStore) -> None:
    [job_id] = store.insert_jobs([NewJob("guard", "self")]).inserted_ids
    first = store.transition(job_id, "internal_error", expected_from="initialized", message="a")
    again = store.transition(
        job_id, "internal_error", expected_from="internal_error", message="b", count_attempt=True
    )
    assert again.status == "internal_error"
    assert again.status_seq == first.status_seq + 1
    assert again.finished_at == first.finished_at  # still the moment it first finished
    changes = [(c.from_status, c.to_status, c.message) for c in store.history(job_id)]
    assert changes == [
        (None, "initialized", None),
        ("initialized", "internal_error", "a"),
        ("internal_error", "internal_error", "b"),
    ]


def test_finished_at_follows_terminal_statuses(store: JobStore) -> None:
    [job_id] = store.insert_jobs([NewJob("guard", "finish")]).inserted_ids
    walk(store, job_id, Status.DONE)
    done = store.get_job(job_id)
    assert done.finished_at == done.status_changed_at
    # Out of a terminal status and back: unset while running, set again at the end.
    steps = [
        ("done", "external_error", False),
        ("external_error", "error_checked", False),
        ("error_checked", "cancelled", True),
        ("cancelled", "internal_error", True),
        ("internal_error", "error_checked", False),
        ("error_checked", "done", True),
        ("done", "expired", True),
        ("expired", "initialized", False),
    ]
    for origin, target, finished in steps:
        job = store.transition(job_id, target, expected_from=origin)
        assert (job.finished_at is not None) is finished, f"{origin} -> {target}"


def test_history_rows_carry_the_transition_context(store: JobStore) -> None:
    [job_id] = store.insert_jobs([NewJob("guard", "context", message="found")]).inserted_ids
    store.transition(
        job_id,
        "internal_error",
        expected_from="initialized",
        message="container exited 1",
        error_class="ProcessingError",
        error_subtype="exit_code",
        run=RunIds(flow_run_id="flow-1", task_run_id="task-1"),
        count_attempt=True,
    )
    store.transition(
        job_id, "error_checked", expected_from="internal_error", run=RunIds(flow_run_id="flow-2")
    )
    inserted, failed, checked = store.history(job_id)
    assert (inserted.message, inserted.attempt, inserted.flow_run_id) == ("found", 0, None)
    assert failed.message == "container exited 1"
    assert (failed.error_class, failed.error_subtype) == ("ProcessingError", "exit_code")
    assert failed.attempt == 1
    assert (failed.flow_run_id, failed.task_run_id) == ("flow-1", "task-1")
    assert (checked.flow_run_id, checked.task_run_id, checked.message) == ("flow-2", None, None)
    assert checked.error_class is None
    assert inserted.changed_at <= failed.changed_at <= checked.changed_at
    assert store.get_job(job_id).last_error == "container exited 1"


# --------------------------------------------------------------------- PostgreSQL, raw SQL


def _initialized_job(store: JobStore) -> int:
    [job_id] = store.insert_jobs([NewJob("guard", "raw")]).inserted_ids
    return job_id


def test_postgresql_refuses_an_illegal_raw_update_and_changes_nothing(pg_store: JobStore) -> None:
    job_id = _initialized_job(pg_store)
    refused = r"illegal status transition for job \d+: initialized -> done"
    with pytest.raises(DBAPIError, match=refused), pg_store.engine.begin() as connection:
        connection.execute(
            text("UPDATE jobline.jobs SET status = 'done' WHERE id = :id"), {"id": job_id}
        )
    job = pg_store.get_job(job_id)
    assert (job.status, job.status_seq, job.finished_at) == ("initialized", 1, None)
    assert [c.to_status for c in pg_store.history(job_id)] == ["initialized"]
    # For every row at once, the legal part of the statement is undone with the rest.
    [processed_id] = pg_store.insert_jobs([NewJob("guard", "processed")]).inserted_ids
    walk(pg_store, processed_id, Status.PROCESSED)
    with pytest.raises(DBAPIError, match=refused), pg_store.engine.begin() as connection:
        connection.execute(text("UPDATE jobline.jobs SET status = 'done'"))
    assert [job.status for job in pg_store.get_jobs([job_id, processed_id])] == [
        "initialized",
        "processed",
    ]


def test_postgresql_legal_raw_update_writes_its_history_row(pg_store: JobStore) -> None:
    job_id = _initialized_job(pg_store)
    pg_store.transition(
        job_id, "configured", expected_from="initialized", run=RunIds("flow-1", "task-1")
    )
    with pg_store.engine.begin() as connection:
        connection.execute(
            text("UPDATE jobline.jobs SET status = 'cancelled' WHERE id = :id"), {"id": job_id}
        )
    job = pg_store.get_job(job_id)
    assert (job.status, job.status_seq) == ("cancelled", 3)
    assert job.finished_at == job.status_changed_at
    last = pg_store.history(job_id)[-1]
    assert (last.from_status, last.to_status) == ("configured", "cancelled")
    assert last.message == "status set directly in the database"
    # The previous transition's Prefect run did not make this change.
    assert (last.flow_run_id, last.task_run_id) == (None, None)
    assert last.changed_at == job.status_changed_at


def test_updates_that_leave_the_status_alone_write_no_history(store: JobStore) -> None:
    job_id = _initialized_job(store)
    with store.engine.begin() as connection:
        connection.execute(
            text("UPDATE jobs SET priority = 5, status = status WHERE id = :id"), {"id": job_id}
        )
    assert store.get_job(job_id).priority == 5
    assert len(store.history(job_id)) == 1
