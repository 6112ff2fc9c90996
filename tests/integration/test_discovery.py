"""Discovery through the plain steps on a real store: unsafe products from a job type's own
``discover`` are rejected and named like unreadable listed objects."""

from __future__ import annotations

from datetime import datetime

from db.store import JobStore
from jobline.settings import Settings
from jobtypes.base import JobType, Product
from tasks import steps
from tasks.results import DiscoveryResult


class OwnDiscovery(JobType):
    name = "own_discovery"
    command = ["true"]

    def discover(self, since: datetime, until: datetime) -> list[Product] | None:
        return [
            Product(product_id="P1", path="memory://in/P1", tile_id="T1"),
            Product(product_id="../../etc", path="memory://in/evil"),
            Product(product_id="P2", path="memory://in/P2", tile_id="T1/../.."),
        ]


def test_unsafe_products_of_a_discover_hook_are_rejected(sqlite_settings: Settings) -> None:
    store = JobStore.from_settings(sqlite_settings)
    logged: list[str] = []
    ctx = steps.StepContext(settings=sqlite_settings, store=store, log=logged.append)
    kind = OwnDiscovery(sqlite_settings)

    discovery = steps.discover_inputs(ctx, kind, None, None)
    inserted = steps.insert_jobs(ctx, kind, discovery)

    assert [p.product_id for p in discovery.products] == ["P1"]
    assert [(r.path, r.kind) for r in discovery.rejected] == [
        ("memory://in/evil", "invalid_product"),
        ("memory://in/P2", "invalid_product"),
    ]
    assert any("rejected memory://in/evil: product_id '../../etc'" in line for line in logged)
    [job_id] = inserted.inserted
    found = store.get_metadata(job_id, "discover-inputs", DiscoveryResult)
    assert (found.rejected_count, found.rejected_by_kind) == (2, {"invalid_product": 2})
    store.engine.dispose()
