"""Property-based run of the API's OpenAPI document against the real server (schemathesis).

Valid and invalid requests generated from the schema must never answer 5xx, and answers must
match the documented schemas. The streaming ``/events`` and the long-polling ``/wait`` are left
out (their own tests cover them): a generated request would hold them open.
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

from db.records import NewJob
from db.store import JobStore
from tests.integration import api_server as server_support
from tests.integration.api_server import ApiServer

pytestmark = pytest.mark.slow
api_server = server_support.api_server  # the fixture

#: Generated cases per operation (about a dozen operations: a few hundred cases in all).
EXAMPLES_PER_OPERATION = 25
#: Headers that frame the message; the HTTP server, not the API, decides on them.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})


@pytest.fixture(scope="module")
def api_schema(api_server: ApiServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{api_server.url}/openapi.json")


@pytest.fixture(scope="module")
def some_jobs(api_schema: schemathesis.BaseSchema, pg_database_url: str) -> None:
    """A few jobs with small ids, so that generated ids sometimes hit one."""
    from jobline.settings import Settings

    store = JobStore.from_settings(Settings(database_url=pg_database_url))
    store.insert_jobs(
        NewJob(job_type="jobtypes.demo:SnowCover", product_id=f"P{n}") for n in range(3)
    )
    store.engine.dispose()


schema = (
    schemathesis.pytest.from_fixture("api_schema")
    .exclude(path="/events")
    .exclude(path_regex=r"/wait$")
)


@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
)
def test_the_api_never_answers_5xx(
    case: schemathesis.Case, api_server: ApiServer, some_jobs: None
) -> None:
    # Framing headers are the HTTP server's (uvicorn answers a malformed one with its own 400
    # in text/plain before the app sees the request): generated values of them test h11.
    if case.headers:
        case.headers = {
            name: value
            for name, value in case.headers.items()
            if name.lower() not in FRAMING_HEADERS
        }
    # Schema-valid requests may still be refused with 4xx for reasons a schema cannot say (a
    # job type that does not import, a NUL character, a message without a status change).
    case.call_and_validate(
        headers=api_server.headers, timeout=30, excluded_checks=[positive_data_acceptance]
    )
