"""The database's own guard over job statuses, generated from :mod:`db.statuses`.

On PostgreSQL and on SQLite, triggers on ``jobs``:

* refuse any status change that :data:`db.statuses.TRANSITIONS` does not allow, even from raw SQL;
* write one ``job_status_changes`` row for every change (the history is the truth, so it is written
  where no code path can forget it). The row copies the transition's context (message, error
  class and subtype, attempt, worker, Prefect run ids) from the job's ``status_*`` columns, which
  :mod:`db.store` sets in the same UPDATE;
* keep ``finished_at`` set exactly while the job is in a terminal status (PostgreSQL; on SQLite the
  store sets it and the CHECK ``ck_jobs_finished_iff_terminal`` verifies it).

A transition is recognised by a change of ``status`` or of ``status_seq`` (the store bumps it), so
that the legal self-transitions such as ``internal_error -> internal_error`` are recorded too.

Changing :data:`~db.statuses.TRANSITIONS` requires a migration that calls :func:`install_guard`
again; ``tests/integration/test_guard.py`` checks every pair of statuses against the live database.
"""

from __future__ import annotations

from collections.abc import Iterable

from db.models import sql_list
from db.statuses import INITIAL, TERMINAL, TRANSITIONS

ILLEGAL_TRANSITION_MARKER = "illegal status transition"

HISTORY_COLUMNS = (
    "job_id, from_status, to_status, changed_at, message, error_class, error_subtype, "
    "attempt, worker, flow_run_id, task_run_id"
)


def _legal_case(old: str, new: str) -> str:
    """A SQL boolean expression: is ``old -> new`` a legal transition?"""
    branches = "\n".join(
        f"            WHEN '{origin.value}' THEN {new} IN ({sql_list(targets)})"
        for origin, targets in TRANSITIONS.items()
    )
    return f"(CASE {old}\n{branches}\n            ELSE false END)"


def _history_values(row_old: str, row_new: str) -> str:
    return (
        f"{row_new}.id, {row_old}, {row_new}.status, {row_new}.status_changed_at, "
        f"{row_new}.status_message, {row_new}.error_class, {row_new}.error_subtype, "
        f"{row_new}.attempts, {row_new}.worker, {row_new}.flow_run_id, {row_new}.task_run_id"
    )


def postgresql_guard(schema: str) -> list[str]:
    """DDL statements that install the guard in ``schema`` on PostgreSQL (idempotent)."""
    s = f'"{schema}"'
    guard = f"""
CREATE OR REPLACE FUNCTION {s}.jobs_guard_status() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status NOT IN ({sql_list(INITIAL)}) THEN
            RAISE EXCEPTION '{ILLEGAL_TRANSITION_MARKER} for a new job: (new job) -> %',
                NEW.status USING ERRCODE = 'check_violation';
        END IF;
    ELSIF NEW.status IS DISTINCT FROM OLD.status OR NEW.status_seq IS DISTINCT FROM OLD.status_seq
    THEN
        IF NOT {_legal_case("OLD.status", "NEW.status")} THEN
            RAISE EXCEPTION '{ILLEGAL_TRANSITION_MARKER} for job %: % -> %',
                OLD.id, OLD.status, NEW.status USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.status_seq IS NOT DISTINCT FROM OLD.status_seq THEN
            -- A raw UPDATE of the status alone: give it a fresh context of its own.
            NEW.status_seq := OLD.status_seq + 1;
            NEW.status_changed_at := now();
            IF NEW.status_message IS NOT DISTINCT FROM OLD.status_message THEN
                NEW.status_message := 'status set directly in the database';
            END IF;
            IF NEW.error_class IS NOT DISTINCT FROM OLD.error_class THEN
                NEW.error_class := NULL;
                NEW.error_subtype := NULL;
            END IF;
            NEW.flow_run_id := NULL;
            NEW.task_run_id := NULL;
        END IF;
    ELSE
        RETURN NEW;
    END IF;
    IF NEW.status IN ({sql_list(TERMINAL)}) THEN
        NEW.finished_at := coalesce(NEW.finished_at, NEW.status_changed_at);
    ELSE
        NEW.finished_at := NULL;
    END IF;
    RETURN NEW;
END
$fn$"""
    record_insert = f"""
CREATE OR REPLACE FUNCTION {s}.jobs_record_insert() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO {s}.job_status_changes ({HISTORY_COLUMNS})
    SELECT {_history_values("NULL", "n")} FROM new_rows n ORDER BY n.id;
    RETURN NULL;
END
$fn$"""
    record_update = f"""
CREATE OR REPLACE FUNCTION {s}.jobs_record_update() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO {s}.job_status_changes ({HISTORY_COLUMNS})
    SELECT {_history_values("o.status", "n")}
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.status_seq IS DISTINCT FROM o.status_seq
    ORDER BY n.id;
    RETURN NULL;
END
$fn$"""
    return [
        guard,
        record_insert,
        record_update,
        f"DROP TRIGGER IF EXISTS jobs_guard_status ON {s}.jobs",
        f"CREATE TRIGGER jobs_guard_status BEFORE INSERT OR UPDATE ON {s}.jobs "
        f"FOR EACH ROW EXECUTE FUNCTION {s}.jobs_guard_status()",
        f"DROP TRIGGER IF EXISTS jobs_record_insert ON {s}.jobs",
        f"CREATE TRIGGER jobs_record_insert AFTER INSERT ON {s}.jobs "
        f"REFERENCING NEW TABLE AS new_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {s}.jobs_record_insert()",
        f"DROP TRIGGER IF EXISTS jobs_record_update ON {s}.jobs",
        f"CREATE TRIGGER jobs_record_update AFTER UPDATE ON {s}.jobs "
        f"REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {s}.jobs_record_update()",
    ]


def sqlite_guard() -> list[str]:
    """DDL statements that install the guard on SQLite (idempotent)."""
    changed = "(NEW.status IS NOT OLD.status OR NEW.status_seq IS NOT OLD.status_seq)"
    return [
        "DROP TRIGGER IF EXISTS jobs_guard_insert",
        f"""CREATE TRIGGER jobs_guard_insert BEFORE INSERT ON jobs
        WHEN NEW.status NOT IN ({sql_list(INITIAL)})
        BEGIN SELECT RAISE(ABORT, '{ILLEGAL_TRANSITION_MARKER} for a new job'); END""",
        "DROP TRIGGER IF EXISTS jobs_guard_update",
        f"""CREATE TRIGGER jobs_guard_update BEFORE UPDATE ON jobs
        WHEN {changed} AND NOT {_legal_case("OLD.status", "NEW.status")}
        BEGIN SELECT RAISE(ABORT, '{ILLEGAL_TRANSITION_MARKER}'); END""",
        "DROP TRIGGER IF EXISTS jobs_record_insert",
        f"""CREATE TRIGGER jobs_record_insert AFTER INSERT ON jobs
        BEGIN INSERT INTO job_status_changes ({HISTORY_COLUMNS})
        VALUES ({_history_values("NULL", "NEW")}); END""",
        "DROP TRIGGER IF EXISTS jobs_record_update",
        f"""CREATE TRIGGER jobs_record_update AFTER UPDATE ON jobs WHEN {changed}
        BEGIN INSERT INTO job_status_changes ({HISTORY_COLUMNS})
        VALUES ({_history_values("OLD.status", "NEW")}); END""",
    ]


def guard_statements(dialect: str, schema: str) -> Iterable[str]:
    """The guard's DDL for a dialect name (``postgresql`` or ``sqlite``)."""
    if dialect == "postgresql":
        return postgresql_guard(schema)
    if dialect == "sqlite":
        return sqlite_guard()
    raise ValueError(f"jobline supports PostgreSQL and SQLite, not {dialect}")


def drop_statements(dialect: str, schema: str) -> list[str]:
    """DDL that removes the guard again (for downgrades)."""
    if dialect == "postgresql":
        s = f'"{schema}"'
        return [
            *(f"DROP TRIGGER IF EXISTS {t} ON {s}.jobs" for t in _PG_TRIGGERS),
            *(f"DROP FUNCTION IF EXISTS {s}.{t}()" for t in _PG_TRIGGERS),
        ]
    return [f"DROP TRIGGER IF EXISTS {t}" for t in _SQLITE_TRIGGERS]


_PG_TRIGGERS = ("jobs_guard_status", "jobs_record_insert", "jobs_record_update")
_SQLITE_TRIGGERS = (
    "jobs_guard_insert",
    "jobs_guard_update",
    "jobs_record_insert",
    "jobs_record_update",
)
