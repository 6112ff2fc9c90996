"""Job keys come from the job type's name: a class can move modules; migration 0006 rewrites the
keys of jobs made before it, on a real PostgreSQL database at revision 0005."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from api.routers.jobs import _new_job
from api.schemas import JobCreate
from db.migrate import downgrade, upgrade
from db.models import Job
from db.records import NewJob, config_key, content_key, product_key
from db.rekey import PENDING_PREFIX
from db.statuses import Status
from db.store import JobStore
from jobline.settings import Settings
from jobtypes.base import load_job_type
from tasks import steps
from tests.integration.test_maintenance import QUEUE, done_job
from tests.support.jobtypes import write_partner_module, write_products


def write_module(directory: Path, module: str, source: str) -> None:
    (directory / f"{module}.py").write_text(textwrap.dedent(source))
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    sys.modules.pop(module, None)


@pytest.fixture
def partner(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """The partner job type ``echo`` (module ``partner_jobtypes``), its input folder, its source."""
    inputs, source = tmp_path / "input", tmp_path / "src"
    path = write_partner_module(source, inputs, tmp_path / "output")
    write_products(inputs, ["ok-1", "ok-2", "ok-3"])
    yield path, inputs, source
    for module in ("partner_jobtypes", "moved_jobtypes", "gone_jobtypes"):
        sys.modules.pop(module, None)


def discover_and_insert(settings: Settings, store: JobStore, import_path: str) -> list[int]:
    """The pipeline's discovery and insert steps (no Prefect); the job ids they inserted."""
    ctx = steps.StepContext(settings=settings, store=store)
    kind = load_job_type(import_path, settings)
    discovery = steps.discover_inputs(ctx, kind, None, None)
    inserted = steps.insert_jobs(ctx, kind, discovery)
    return inserted.inserted + inserted.cancelled


def job_count(store: JobStore) -> int:
    with store.session() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def at_0005(settings: Settings, store: JobStore) -> None:
    """Take the store, with the jobs just made, back to revision 0005.

    The store's code writes the columns of today's schema, so a test makes its "jobs as the
    code at 0005 made them" at head, with 0005's keys (from the import path, as ``NewJob``'s
    default and the API's hash of path and config made them), and then downgrades: the later
    revisions drop what they added, and 0006's downgrade leaves keys from import paths as
    they are. The rows are then those of a store at 0005.
    """
    downgrade(settings, "0005")
    store.engine.dispose()


def keys_by_product(store: JobStore) -> dict[str, bytes]:
    """Every job's key by product, read with plain SQL (it works at any revision)."""
    with store.engine.connect() as connection:
        rows = connection.execute(text(f"SELECT product_id, job_key FROM {jobs_table(store)}"))
        return {product: bytes(key) for product, key in rows}


def jobs_table(store: JobStore) -> str:
    return "jobline.jobs" if store.dialect == "postgresql" else "jobs"


def test_moving_a_job_type_class_to_another_module_creates_no_job(
    pg_settings: Settings, partner: tuple[str, Path, Path]
) -> None:
    path, _inputs, source = partner
    store = JobStore.from_settings(pg_settings)
    first = discover_and_insert(pg_settings, store, path)
    assert len(first) == 3
    # The same class, moved to another module: a new import path, the same name.
    write_module(source, "moved_jobtypes", (source / "partner_jobtypes.py").read_text())
    # The partner registers the class at its new path, as its package would.
    moved = pg_settings.model_copy(update={"job_types": ["moved_jobtypes:Echo"]})

    again = discover_and_insert(moved, store, "moved_jobtypes:Echo")

    assert again == []
    assert job_count(store) == 3
    keys = {job.job_key for job in store.list_jobs().jobs}
    assert keys == {product_key("echo", p) for p in ("ok-1", "ok-2", "ok-3")}


def test_migration_0006_rewrites_the_keys_of_jobs_made_at_0005(
    empty_pg_url: str, tmp_path: Path, partner: tuple[str, Path, Path]
) -> None:
    path, _inputs, source = partner
    # gone_jobtypes is registered but cannot be imported when the migration runs.
    settings = Settings(
        database_url=empty_pg_url, data_dir=tmp_path / "data", job_types=["gone_jobtypes:Gone"]
    )
    upgrade(settings)
    store = JobStore.from_settings(settings)
    # Jobs as the code at 0005 made them (see at_0005): keys from the import path (NewJob's
    # default key is product_key(job_type, product_id), and the API hashed the path with the
    # config).
    old_ids = store.insert_jobs([NewJob(path, "ok-1"), NewJob(path, "ok-2")]).inserted_ids
    expired = done_job(store, "ok-3", job_type=path)
    store.transition(expired, Status.EXPIRED, expected_from=Status.DONE)
    config = {"threshold": 0.4, "bands": ["B03", "B11"]}
    submitted_key = content_key("config", path, '{"bands":["B03","B11"],"threshold":0.4}')
    replaced_key = content_key("config", path, '{"x":1}')
    store.insert_jobs(
        [
            NewJob(path, f"config:{submitted_key.hex()}", config=config, job_key=submitted_key),
            # A config job whose configuration step replaced its config since.
            NewJob(path, f"config:{replaced_key.hex()}", config={"x": 2}, job_key=replaced_key),
            NewJob("gone_jobtypes:Gone", "g-1", queue=QUEUE),
        ]
    )
    before = job_count(store)
    by_product = {job.product_id: job.id for job in store.list_jobs().jobs}
    at_0005(settings, store)
    assert keys_by_product(store)["ok-1"] == content_key("product", path, "ok-1")

    assert upgrade(settings, "0006") == "0006"
    upgrade(settings)  # the later revisions do not touch keys

    assert job_count(store) == before == 6
    jobs = {job.product_id: job for job in store.list_jobs().jobs}
    assert {p: jobs[p].id for p in jobs} == by_product, "no job lost or made"
    for product in ("ok-1", "ok-2", "ok-3"):
        assert jobs[product].job_key == product_key("echo", product)
    assert jobs[f"config:{submitted_key.hex()}"].job_key == config_key("echo", config)
    assert jobs[f"config:{replaced_key.hex()}"].job_key == replaced_key, "kept: config is gone"
    assert jobs["g-1"].job_key == content_key("product", "gone_jobtypes:Gone", "g-1")
    assert set(store.pending_rekeys()) == {"gone_jobtypes:Gone"}
    assert "cannot import 'gone_jobtypes'" in store.pending_rekeys()["gone_jobtypes:Gone"]

    # Rediscovery with the new keys inserts nothing: it revives the expired job, as it should.
    revived = discover_and_insert(settings, store, path)
    assert revived == [expired]
    assert store.get_job(expired).status == "initialized"
    assert job_count(store) == 6
    # The API finds the config job by the key it now computes.
    kind = load_job_type(path, settings)
    resubmitted = _new_job(JobCreate(job_type=path, config=config), kind)
    found = store.get_job_by_key(resubmitted.key)
    assert found is not None and found.id == by_product[f"config:{submitted_key.hex()}"]

    # The job type that could not be loaded gets its keys rewritten when it is used again.
    write_module(
        source,
        "gone_jobtypes",
        f"""
        from partner_jobtypes import Echo

        class Gone(Echo):
            name = "gone"
            input_storage = "file://{tmp_path / "gone-input"}"
        """,
    )
    write_products(tmp_path / "gone-input", ["g-1"])
    assert discover_and_insert(settings, store, "gone_jobtypes:Gone") == []
    assert store.get_job(jobs["g-1"].id).job_key == product_key("gone", "g-1")
    assert store.pending_rekeys() == {}
    assert store.get_meta(PENDING_PREFIX + "gone_jobtypes:Gone") is None
    assert job_count(store) == 6

    # And back: 0005's keys again.
    downgrade(settings, "0005")
    restored = keys_by_product(store)
    assert restored["ok-1"] == content_key("product", path, "ok-1")
    assert restored[f"config:{submitted_key.hex()}"] == submitted_key
    assert restored["g-1"] == content_key("product", "gone_jobtypes:Gone", "g-1")
    assert old_ids == [by_product["ok-1"], by_product["ok-2"]]
    store.engine.dispose()


def test_a_job_type_that_moved_before_the_migration_keeps_one_job_per_product(
    empty_pg_url: str, tmp_path: Path, partner: tuple[str, Path, Path]
) -> None:
    """Before 0006 a moved class made a second job per product; both map to one new key, which
    the older job keeps (the newer keeps its old key and is reported as a duplicate)."""
    path, _inputs, source = partner
    write_module(source, "moved_jobtypes", (source / "partner_jobtypes.py").read_text())
    settings = Settings(
        database_url=empty_pg_url, data_dir=tmp_path / "data", job_types=["moved_jobtypes:Echo"]
    )
    upgrade(settings)
    store = JobStore.from_settings(settings)
    [older] = store.insert_jobs([NewJob(path, "ok-1")]).inserted_ids
    [newer] = store.insert_jobs([NewJob("moved_jobtypes:Echo", "ok-1")]).inserted_ids
    at_0005(settings, store)

    upgrade(settings)

    assert store.get_job(older).job_key == product_key("echo", "ok-1")
    assert store.get_job(newer).job_key == content_key("product", "moved_jobtypes:Echo", "ok-1")
    inserted = discover_and_insert(settings, store, "moved_jobtypes:Echo")
    assert sorted(store.get_job(i).product_id for i in inserted) == ["ok-2", "ok-3"], "ok-1 known"
    store.engine.dispose()


def test_jobline_db_rekey_names_a_job_type_that_cannot_load(
    pg_settings: Settings, jobline_env: Callable[[Settings], Settings]
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    jobline_env(pg_settings)
    store = JobStore.from_settings(pg_settings)
    [job_id] = store.insert_jobs([NewJob("old_place:Lost", "p-1")]).inserted_ids
    runner = CliRunner()

    refused = runner.invoke(app, ["db", "rekey", "old_place:Lost"])
    assert refused.exit_code == 2
    assert "cannot import 'old_place'" in refused.output and "--name" in refused.output
    bad = runner.invoke(app, ["db", "rekey", "old_place:Lost", "--name", "../x"])
    assert bad.exit_code == 2 and "--name" in bad.output

    done = runner.invoke(app, ["db", "rekey", "old_place:Lost", "--name", "lost"])
    assert done.exit_code == 0, done.output
    assert "1 keys rewritten" in done.output
    assert store.get_job(job_id).job_key == product_key("lost", "p-1")
    store.engine.dispose()


def test_migration_0006_on_sqlite(tmp_path: Path, partner: tuple[str, Path, Path]) -> None:
    path, _inputs, _source = partner
    settings = Settings(data_dir=tmp_path / "data")
    upgrade(settings)
    store = JobStore.from_settings(settings)
    store.insert_jobs([NewJob(path, "ok-1"), NewJob(path, "ok-2")])
    at_0005(settings, store)

    upgrade(settings)

    assert {job.job_key for job in store.list_jobs().jobs} == {
        product_key("echo", "ok-1"),
        product_key("echo", "ok-2"),
    }
    assert len(discover_and_insert(settings, store, path)) == 1, "only ok-3 is new"
    store.engine.dispose()
