"""The database's own guard over job statuses, generated from :mod:`db.statuses`.

On PostgreSQL and on SQLite, triggers on ``jobs``:

* refuse any status change that :data:`db.statuses.TRANSITIONS` does not allow, even from raw SQL;
* write one ``job_status_changes`` row for every change (the history is the truth, so it is written
  where no code path can forget it). The row copies the transition's context (message, error
  class and subtype, attempt, worker, Prefect run ids) from the job's ``status_*`` columns, which
  :mod:`db.store` sets in the same UPDATE;
* keep ``finished_at`` set exactly while the job is in a terminal status (PostgreSQL; on SQLite the
  store sets it and the CHECK ``ck_jobs_finished_iff_terminal`` verifies it).

On PostgreSQL the row triggers carry their conditions in ``WHEN`` clauses, which the executor
evaluates without calling a function: a legal transition that sets its own context and
``finished_at`` (every transition of :mod:`db.store`) runs no PL/pgSQL per row; an illegal one, or
raw SQL that changes the status alone, calls the function that refuses or completes it. The
history is written per statement, from transition tables.

A transition is recognised by a change of ``status`` or of ``status_seq`` (the store bumps it), so
that the legal self-transitions such as ``internal_error -> internal_error`` are recorded too.

Changing :data:`~db.statuses.TRANSITIONS` (or this module's SQL) requires a migration that runs
:func:`guard_statements` again, as ``0005_guard_when_clauses`` does;
``tests/integration/test_guard.py`` checks every pair of statuses against the live database.
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


def _changed(old: str, new: str) -> str:
    """A SQL boolean expression: does this UPDATE change the status (or bump its sequence)?"""
    return (
        f"({new}.status IS DISTINCT FROM {old}.status "
        f"OR {new}.status_seq IS DISTINCT FROM {old}.status_seq)"
    )


def _finished_mismatch(new: str) -> str:
    """A SQL boolean expression: does ``finished_at`` disagree with the (new) status?"""
    return f"({new}.status IN ({sql_list(TERMINAL)})) <> ({new}.finished_at IS NOT NULL)"


#: The PostgreSQL guard's row triggers on ``jobs``: name -> (event, WHEN condition, function).
#: BEFORE ROW triggers fire in the order of their names: a raw change gets its context first,
#: then ``finished_at`` follows the (final) status. A trigger whose WHEN is false calls nothing:
#: the store's own transitions, which are legal and set every column themselves, call no function
#: at all (a PL/pgSQL call per row cost 10-25 % of a bulk insert, see migration 0005).
_PG_ROW_TRIGGERS = {
    "jobs_guard_insert": (
        "INSERT",
        f"NEW.status NOT IN ({sql_list(INITIAL)})",
        "jobs_refuse_status",
    ),
    "jobs_guard_insert_terminal": ("INSERT", _finished_mismatch("NEW"), "jobs_set_finished"),
    "jobs_guard_raw_change": (
        "UPDATE",
        "NEW.status IS DISTINCT FROM OLD.status AND NEW.status_seq IS NOT DISTINCT FROM "
        "OLD.status_seq",
        "jobs_raw_change",
    ),
    "jobs_guard_status": (
        "UPDATE",
        f"{_changed('OLD', 'NEW')} AND NOT {_legal_case('OLD.status', 'NEW.status')}",
        "jobs_refuse_status",
    ),
    "jobs_guard_terminal": (
        "UPDATE",
        f"{_changed('OLD', 'NEW')} AND {_finished_mismatch('NEW')}",
        "jobs_set_finished",
    ),
}
#: The guard's first layout (migration 0001): one row trigger calling one function on every write.
_PG_LEGACY_FUNCTIONS = ("jobs_guard_status",)


def _pg_function_bodies(s: str) -> dict[str, str]:
    """The PL/pgSQL bodies of the guard's functions in schema ``s`` (quoted), by name."""
    return {
        "jobs_refuse_status": f"""
    IF TG_OP = 'INSERT' THEN
        RAISE EXCEPTION '{ILLEGAL_TRANSITION_MARKER} for a new job: (new job) -> %',
            NEW.status USING ERRCODE = 'check_violation';
    END IF;
    RAISE EXCEPTION '{ILLEGAL_TRANSITION_MARKER} for job %: % -> %',
        OLD.id, OLD.status, NEW.status USING ERRCODE = 'check_violation';""",
        "jobs_raw_change": """
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
    RETURN NEW;""",
        "jobs_set_finished": f"""
    IF NEW.status IN ({sql_list(TERMINAL)}) THEN
        NEW.finished_at := NEW.status_changed_at;
    ELSE
        NEW.finished_at := NULL;
    END IF;
    RETURN NEW;""",
        "jobs_record_insert": f"""
    INSERT INTO {s}.job_status_changes ({HISTORY_COLUMNS})
    SELECT {_history_values("NULL", "n")} FROM new_rows n ORDER BY n.id;
    RETURN NULL;""",
        "jobs_record_update": f"""
    INSERT INTO {s}.job_status_changes ({HISTORY_COLUMNS})
    SELECT {_history_values("o.status", "n")}
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.status_seq IS DISTINCT FROM o.status_seq
    ORDER BY n.id;
    RETURN NULL;""",
    }


#: The history's statement triggers on ``jobs``: name -> (event, transition tables).
_PG_STATEMENT_TRIGGERS = {
    "jobs_record_insert": ("INSERT", "REFERENCING NEW TABLE AS new_rows"),
    "jobs_record_update": ("UPDATE", "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"),
}


def postgresql_guard(schema: str) -> list[str]:
    """DDL statements that install the guard in ``schema`` on PostgreSQL (idempotent; replaces
    the first layout of migration 0001)."""
    s = f'"{schema}"'
    statements = [
        *_pg_drop_triggers(s),
        *(f"DROP FUNCTION IF EXISTS {s}.{name}()" for name in _PG_LEGACY_FUNCTIONS),
    ]
    statements += [
        f"CREATE OR REPLACE FUNCTION {s}.{name}() RETURNS trigger LANGUAGE plpgsql AS "
        f"$fn$\nBEGIN{body}\nEND\n$fn$"
        for name, body in _pg_function_bodies(s).items()
    ]
    statements += [
        f"CREATE TRIGGER {name} BEFORE {event} ON {s}.jobs FOR EACH ROW "
        f"WHEN ({condition}) EXECUTE FUNCTION {s}.{function}()"
        for name, (event, condition, function) in _PG_ROW_TRIGGERS.items()
    ]
    statements += [
        f"CREATE TRIGGER {name} AFTER {event} ON {s}.jobs {tables} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {s}.{name}()"
        for name, (event, tables) in _PG_STATEMENT_TRIGGERS.items()
    ]
    return statements


def _pg_drop_triggers(s: str) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {name} ON {s}.jobs" for name in _PG_TRIGGERS]


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
        functions = (*_pg_function_bodies(s), *_PG_LEGACY_FUNCTIONS)
        return [
            *_pg_drop_triggers(s),
            *(f"DROP FUNCTION IF EXISTS {s}.{name}()" for name in functions),
        ]
    return [f"DROP TRIGGER IF EXISTS {t}" for t in _SQLITE_TRIGGERS]


#: Every trigger the guard has had on PostgreSQL (the legacy ``jobs_guard_status`` included).
_PG_TRIGGERS = (*_PG_ROW_TRIGGERS, *_PG_STATEMENT_TRIGGERS)
_SQLITE_TRIGGERS = (
    "jobs_guard_insert",
    "jobs_guard_update",
    "jobs_record_insert",
    "jobs_record_update",
)
