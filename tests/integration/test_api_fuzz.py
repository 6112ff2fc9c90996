"""Property-based: arbitrary Unicode (lone surrogates included) and arbitrary JSON shapes sent to
every write endpoint of a real ``jobline api`` on PostgreSQL never answer 5xx.

Unlike the schema-driven run (``test_api_schema.py``), the inputs here ignore the schema: bodies
are any JSON value, objects with the endpoint's own field names holding any JSON value, or plain
bytes; ids and metadata keys (percent-encoded, surrogates as their UTF-8-like bytes) are any
text or number. Every answer must be below 500, and every 4xx the API's error body. 2,000 cases
(derandomized, so every run sends the same ones) take about 30-60 s here, mostly the requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import hypothesis
import pytest
from hypothesis import strategies as st

from db.records import NewJob
from db.store import JobStore
from tests.integration import api_server as server_support
from tests.integration.api_server import JOB_TYPE, ApiServer

pytestmark = pytest.mark.slow
api_server = server_support.api_server  # the fixture

CASES = 2_000

#: Any character, lone surrogates and control characters included.
ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=24)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | ANY_TEXT
    | st.sampled_from(["", JOB_TYPE, "snow_cover", "this:x", "done", "started", "0" * 32])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)

#: The fields each write endpoint knows: bodies with these names get past the first checks.
FIELDS = {
    "create": [
        "job_type", "product_id", "config", "priority", "queue", "tile_id", "input_path",
        "input_publication_date", "input_files", "max_attempts",
    ],
    "patch": [
        "status", "message", "error_class", "lease_token", "priority", "max_attempts",
        "output_path", "output_publication_date", "output_files",
    ],
    "retry": ["message"],
    "cancel": ["message"],
    "claim": ["worker", "lease_seconds"],
    "heartbeat": ["lease_token", "lease_seconds"],
    "metadata": ["a", "blob", "nested"],
}  # fmt: skip


@dataclass(frozen=True)
class Case:
    endpoint: str
    job: Any
    key: str
    body: bytes

    def request(self) -> tuple[str, str]:
        job = quote(str(self.job).encode("utf-8", "surrogatepass"), safe="")
        key = quote(self.key.encode("utf-8", "surrogatepass"), safe="")
        return {
            "create": ("POST", "/jobs"),
            "patch": ("PATCH", f"/jobs/{job}"),
            "retry": ("POST", f"/jobs/{job}/retry"),
            "cancel": ("POST", f"/jobs/{job}/cancel"),
            "claim": ("POST", f"/jobs/{job}/claim"),
            "heartbeat": ("POST", f"/jobs/{job}/heartbeat"),
            "metadata": ("PUT", f"/jobs/{job}/metadata/{key}"),
            "delete-metadata": ("DELETE", f"/jobs/{job}/metadata/{key}"),
        }[self.endpoint]


def shaped(endpoint: str) -> st.SearchStrategy[Any]:
    names = FIELDS.get(endpoint, [])
    return st.fixed_dictionaries({}, optional={name: JSON for name in names})


@st.composite
def cases(draw: st.DrawFn, job_ids: list[int]) -> Case:
    endpoint = draw(st.sampled_from([*FIELDS, "delete-metadata"]))
    job = draw(st.sampled_from(job_ids) | st.integers(-5, 2**64) | ANY_TEXT)
    key = draw(st.sampled_from(["review", "configure", ".."]) | ANY_TEXT)
    body = draw(shaped(endpoint).map(_encoded) | JSON.map(_encoded) | st.binary(max_size=48))
    return Case(endpoint, job, key, body)


def _encoded(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode()  # surrogates as \\udXXX escapes


@pytest.fixture
def seeded(api_server: ApiServer, pg_store: JobStore) -> Iterator[list[int]]:
    """Jobs in several statuses (one claimed, with a lease), for the cases to hit."""
    inserted = pg_store.insert_jobs(
        NewJob(JOB_TYPE, f"F{n}", queue="snow") for n in range(5)
    ).inserted_ids
    paths = [(), ("configured", "ready"), ("configured", "ready"), ("cancelled",), ()]
    for job_id, path in zip(inserted, paths, strict=True):
        current = "initialized"
        for status in path:
            pg_store.transition(job_id, status, expected_from=current)
            current = status
    pg_store.claim("snow", 1, "fuzz-worker", job_ids=[inserted[2]])
    yield inserted


def test_no_input_answers_5xx(api_server: ApiServer, seeded: list[int]) -> None:
    seen: list[int] = []
    with api_server.client(timeout=30) as client:

        @hypothesis.settings(
            max_examples=CASES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=cases(seeded))
        def send(case: Case) -> None:
            method, path = case.request()
            response = client.request(
                method, path, content=case.body, headers={"content-type": "application/json"}
            )
            seen.append(response.status_code)
            assert response.status_code < 500, (case, response.text[:500])
            if response.status_code >= 400:
                body = response.json()
                assert set(body) == {"detail", "errors"} and body["errors"], body

        send()
    assert len(seen) >= CASES
    assert any(200 <= status < 300 for status in seen), "some cases got through"
